package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/pool"
)

// rotor across many hosts, on one machine: HAProxy (TCP, send-proxy-v2,
// checks) in front of 2 gateway rotors, whose pools are 3 exit rotors as
// upstream entries with session pass-through, each exit with 2 addresses.
// README's "Many hosts" section describes the shape.
func TestManyHosts(t *testing.T) {
	t.Parallel()
	bin := needHAProxy(t)
	peer := tcpTarget(t, target.WritePeer)
	ht := httpTarget(t)
	exitAddrs := [][]string{{"127.0.0.2", "127.0.0.3"}, {"127.0.0.4", "127.0.0.5"}, {"127.0.0.6", "127.0.0.7"}}
	var exits []*rotor
	var entries []string
	for _, pair := range exitAddrs {
		e := startRotor(t, func(c *config.Config) {
			c.Pool = []netip.Prefix{pool.Single(netip.MustParseAddr(pair[0])), pool.Single(netip.MustParseAddr(pair[1]))}
		})
		exits = append(exits, e)
		entries = append(entries, "socks5://"+testUser+":"+testPass+"@"+e.sock+"?session=pass")
	}
	var gateways []*rotor
	for range 2 {
		gateways = append(gateways, startRotor(t, func(c *config.Config) {
			c.Pool = nil
			for _, e := range entries {
				c.Upstreams = append(c.Upstreams, mustUpstream(t, e))
			}
			c.MixedListen = "127.0.0.1:0"
			c.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
			c.HealthFall = 1
		}))
	}
	front := startHAProxy(t, bin, gateways[0].mixedAddr.String(), gateways[1].mixedAddr.String())

	// Clients come from 127.0.0.50: the gateways learn it from HAProxy's
	// PROXY header.
	const client = "127.0.0.50"
	creds := func(user string) string { return basicCreds(user, testPass) }
	connectVia := func(user string) (string, error) {
		c := connFrom(t, client, front)
		defer c.Close()
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nProxy-Authorization: Basic %s\r\n\r\n", peer.Addr, creds(user))
		br := bufio.NewReader(c)
		status, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(status, "HTTP/1.1 200") {
			return "", fmt.Errorf("CONNECT: %q %v", status, err)
		}
		_, _ = br.ReadString('\n')
		line, err := br.ReadString('\n')
		return strings.TrimSpace(line), err
	}
	socksVia := func(user string) (string, error) {
		c := connFrom(t, client, front)
		defer c.Close()
		c.Write(append(socksHelloAs(user, testPass), socksConnect(netip.MustParseAddrPort(peer.Addr))...))
		reply := make([]byte, 2+2+10)
		if _, err := io.ReadFull(c, reply); err != nil || reply[3] != 0 {
			return "", fmt.Errorf("SOCKS5: %v %v", reply, err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line), err
	}
	getVia := func(user string) (string, error) {
		c := connFrom(t, client, front)
		defer c.Close()
		fmt.Fprintf(c, "GET http://%s/ip HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\nConnection: close\r\n\r\n", ht.Addr, ht.Addr, creds(user))
		b, err := io.ReadAll(c)
		if err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 200") {
			return "", fmt.Errorf("GET: %q %v", b, err)
		}
		_, body, _ := strings.Cut(string(b), "\r\n\r\n")
		return strings.TrimSpace(body), nil
	}
	paths := []func(string) (string, error){connectVia, socksVia, getVia}

	// 600 requests, CONNECT, SOCKS5 and absolute-form in turn: exact
	// rotation over the exits' addresses (an absolute-form request takes a
	// new tunnel through an exit, not an idle one that would repeat its
	// address).
	seen := map[string]int{}
	for i := range 600 {
		got, err := paths[i%3](testUser)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		seen[got]++
	}
	for _, pair := range exitAddrs {
		for _, a := range pair {
			if seen[a] != 100 {
				t.Errorf("exit address %s seen %d times of 600, want 100 (all: %v)", a, seen[a], seen)
			}
		}
	}
	for _, g := range gateways {
		if !strings.Contains(g.log.String(), `"client":"`+client+`:`) {
			t.Errorf("a gateway does not log the client's own address from the PROXY header")
		}
	}

	// A session holds one exit address through both gateways.
	sessionAddr := func(key string, path int) (string, error) {
		return paths[path%3](testUser + "-session-" + key)
	}
	keys := []string{"s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "s12"}
	before := map[string]string{}
	for _, k := range keys {
		for i := range 4 {
			got, err := sessionAddr(k, i)
			if err != nil {
				t.Fatalf("session %s: %v", k, err)
			}
			if before[k] != "" && got != before[k] {
				t.Fatalf("session %s left from %s, then %s", k, before[k], got)
			}
			before[k] = got
		}
	}

	// Stopping one exit moves only its sessions: once both gateways have
	// noticed (one failed attempt each, retried over another exit), no
	// request fails.
	stopped := exits[0]
	stopped.stopAccepting()
	for _, k := range keys {
		_, _ = sessionAddr(k, 0)
		_, _ = sessionAddr(k, 1)
	}
	for _, k := range keys {
		for i := range 2 {
			got, err := sessionAddr(k, i)
			if err != nil {
				t.Fatalf("session %s after exit 1 stopped: %v", k, err)
			}
			onStopped := before[k] == exitAddrs[0][0] || before[k] == exitAddrs[0][1]
			switch {
			case onStopped && (got == exitAddrs[0][0] || got == exitAddrs[0][1]):
				t.Errorf("session %s still on the stopped exit (%s)", k, got)
			case !onStopped && got != before[k]:
				t.Errorf("session %s moved from %s to %s, though its exit runs", k, before[k], got)
			}
		}
	}

	// Stopping one gateway loses no request once HAProxy's check has
	// marked it down.
	gateways[1].stopAccepting()
	time.Sleep(time.Second)
	for i := range 30 {
		if _, err := paths[i%3](testUser); err != nil {
			t.Fatalf("request %d after a gateway stopped: %v", i, err)
		}
	}
}

// startHAProxy runs HAProxy in TCP mode, balancing round-robin over
// backends with PROXY protocol v2 and checks every 100 ms, and returns
// its front address.
func startHAProxy(t *testing.T, bin string, backends ...string) string {
	t.Helper()
	front := freePort(t)
	var servers strings.Builder
	for i, b := range backends {
		fmt.Fprintf(&servers, "  server b%d %s send-proxy-v2 check check-send-proxy inter 100ms fall 2 rise 2\n", i, b)
	}
	// One thread: round-robin is then strict, and so are the counts.
	cfg := fmt.Sprintf(`global
  maxconn 500
  nbthread 1
defaults
  mode tcp
  timeout connect 2s
  timeout client 10s
  timeout server 10s
  retries 3
  option redispatch
frontend proxy
  bind 127.0.0.1:%d
  default_backend rotors
backend rotors
  balance roundrobin
%s`, front, servers.String())
	cf := filepath.Join(t.TempDir(), "haproxy.cfg")
	writeFile(t, cf, cfg)
	hp := exec.Command(bin, "-db", "-f", cf)
	out := &syncBuffer{}
	hp.Stdout, hp.Stderr = out, out
	if err := hp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hp.Process.Kill(); _ = hp.Wait() })
	addr := "127.0.0.1:" + strconv.Itoa(front)
	waitListen(t, addr, out)
	// Let the first checks pass before the first request.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			break
		}
	}
	return addr
}

// deploy/haproxy.cfg is one HAProxy accepts.
func TestDeployHAProxyConfig(t *testing.T) {
	t.Parallel()
	bin := needHAProxy(t)
	if out, err := exec.Command(bin, "-c", "-f", filepath.Join("..", "..", "deploy", "haproxy.cfg")).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c deploy/haproxy.cfg: %v\n%s", err, out)
	}
}

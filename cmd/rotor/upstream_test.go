package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/pool"
)

func needMicrosocks(t *testing.T) string {
	t.Helper()
	return needBinary(t, "microsocks", "microsocks")
}

// startMicrosocks runs microsocks on a free loopback port, its outgoing
// connections bound to bind, with credentials; kill ends it early.
func startMicrosocks(t *testing.T, bind, user, pass string) (addr string, kill func()) {
	t.Helper()
	bin := needMicrosocks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	cmd := exec.Command(bin, "-i", "127.0.0.1", "-p", port, "-b", bind, "-u", user, "-P", pass)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	kill = func() { once.Do(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }) }
	t.Cleanup(kill)
	addr = "127.0.0.1:" + port
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr, kill
		}
		if time.Now().After(deadline) {
			t.Fatalf("microsocks did not listen on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startTinyproxy runs tinyproxy on a free loopback port, its outgoing
// connections bound to bind, with Basic credentials; with no ConnectPort
// line it tunnels to any port.
func startTinyproxy(t *testing.T, bind, user, pass string) string {
	t.Helper()
	bin := needBinary(t, "tinyproxy", "tinyproxy")
	port := strconv.Itoa(freePort(t))
	conf := filepath.Join(t.TempDir(), "tinyproxy.conf")
	writeFile(t, conf, "Port "+port+"\nListen 127.0.0.1\nBind "+bind+"\nTimeout 30\nMaxClients 100\nLogLevel Critical\n"+
		"DisableViaHeader Yes\nBasicAuth "+user+" "+pass+"\n")
	cmd := exec.Command(bin, "-d", "-c", conf)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := "127.0.0.1:" + port
	waitListen(t, addr, out)
	return addr
}

// exitRotor is a rotor on one loopback address, another rotor's upstream.
func exitRotor(t *testing.T, addr string) *rotor {
	t.Helper()
	return startRotor(t, func(c *config.Config) {
		c.Pool = []netip.Prefix{pool.Single(netip.MustParseAddr(addr))}
	})
}

func mustUpstream(t *testing.T, entry string) *pool.Upstream {
	t.Helper()
	up, err := pool.ParseUpstream(entry)
	if err != nil {
		t.Fatal(err)
	}
	return up
}

// One rotation over a local address and four upstream proxies (a rotor's
// SOCKS5 listener, a rotor's HTTP listener, microsocks and tinyproxy, each
// bound to an address of its own): CONNECT, SOCKS5 and absolute-form each
// see every exit address the same number of times, and no upstream
// credential reaches a log line or a metric.
func TestUpstreamEntriesRotate(t *testing.T) {
	t.Parallel()
	peer := tcpTarget(t, target.WritePeer)
	ht := httpTarget(t)
	socksExit, httpExit := exitRotor(t, "127.0.0.3"), exitRotor(t, "127.0.0.4")
	const msUser, msPass = "ms-user", "ms-secret-c0ffee"
	ms, _ := startMicrosocks(t, "127.0.0.5", msUser, msPass)
	const tpUser, tpPass = "tp-user", "tp-secret-beef"
	tp := startTinyproxy(t, "127.0.0.6", tpUser, tpPass)
	r := startRotor(t, func(c *config.Config) {
		c.Pool = []netip.Prefix{pool.Single(netip.MustParseAddr("127.0.0.2"))}
		c.Upstreams = []*pool.Upstream{
			mustUpstream(t, "socks5://"+testUser+":"+testPass+"@"+socksExit.sock),
			mustUpstream(t, "http://"+testUser+":"+testPass+"@"+httpExit.http),
			mustUpstream(t, "socks5://"+msUser+":"+msPass+"@"+ms),
			mustUpstream(t, "http://"+tpUser+":"+tpPass+"@"+tp),
		}
		c.MetricsListen = "127.0.0.1:0"
	})
	ctx := context.Background()
	c := proxyClient(r.httpURL(), 1)
	defer c.CloseIdleConnections()
	for _, path := range []struct {
		name string
		do   func() (string, error)
	}{
		{"CONNECT", func() (string, error) { return connectVia(ctx, r.http, testUser, testPass, peer.Addr) }},
		{"SOCKS5", func() (string, error) { return socksVia(ctx, r.sock, testUser, testPass, peer.Addr) }},
		{"SOCKS5 by name", func() (string, error) { return socksVia(ctx, r.sock, testUser, testPass, "localhost:"+port(peer.Addr)) }},
		{"absolute-form", func() (string, error) { return getVia(ctx, c, "http://"+ht.Addr+"/ip") }},
	} {
		t.Run(path.name, func(t *testing.T) {
			seen := map[string]int{}
			for i := 0; i < 10; i++ {
				got, err := path.do()
				if err != nil {
					t.Fatalf("request %d: %v\n%s", i, err, r.log.String())
				}
				seen[got]++
			}
			for _, a := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"} {
				if seen[a] != 2 {
					t.Errorf("%s seen %d times of 10, want 2 (all: %v)", a, seen[a], seen)
				}
			}
		})
	}
	resp, err := http.Get("http://" + r.metricsLn.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `source="socks5://***@`+ms+`"`) {
		t.Errorf("no metrics under the redacted upstream label:\n%s", metrics)
	}
	logs := r.log.String()
	for _, secret := range []string{msPass, tpPass, testPass} {
		if strings.Contains(logs, secret) || strings.Contains(string(metrics), secret) {
			t.Errorf("an upstream password reached the log or /metrics")
		}
	}
	if !strings.Contains(logs, `"src":"http://***@`+httpExit.http+`"`) {
		t.Errorf("log lines do not name the upstream entry")
	}
}

// An upstream that refuses rotor's credentials: a request that picked it
// is tried once more over the next entry, so the client does not see the
// failure; after --health-fall such failures the entry is out of rotation,
// logged without its credentials. With no other entry to try, the client
// gets 502, never a 407 that would have it resend its own password.
func TestUpstreamRefusingAuthLeavesRotation(t *testing.T) {
	t.Parallel()
	peer := tcpTarget(t, target.WritePeer)
	exit := exitRotor(t, "127.0.0.3")
	bad := "http://" + testUser + ":wrong-pass-zz@" + exit.http
	r := startRotor(t, func(c *config.Config) {
		c.Pool = []netip.Prefix{pool.Single(netip.MustParseAddr("127.0.0.2"))}
		c.Upstreams = []*pool.Upstream{mustUpstream(t, bad)}
		c.HealthFall = 2
	})
	for i := 0; i < 6; i++ {
		if st, body := connectStatus(t, r.http, peer.Addr); st != "200" || !strings.Contains(body, "127.0.0.2") {
			t.Fatalf("request %d: %s %q, want 200 from 127.0.0.2 (retried past the failing upstream)", i, st, body)
		}
	}
	logs := r.waitLog("upstream", "out of rotation")
	if strings.Contains(logs, "wrong-pass-zz") || !strings.Contains(logs, `"src":"http://***@`+exit.http+`"`) ||
		!strings.Contains(logs, "source address out of rotation") {
		t.Errorf("log lines:\n%s", logs)
	}

	only := startRotor(t, func(c *config.Config) {
		c.Pool = nil
		c.Upstreams = []*pool.Upstream{mustUpstream(t, bad)}
	})
	st, body := connectStatus(t, only.http, peer.Addr)
	if st != "502" || strings.Contains(body, "wrong-pass-zz") || strings.Contains(body, "Proxy-Authenticate") {
		t.Errorf("the only entry refusing rotor's credentials: %s %q, want 502 without its password", st, body)
	}
}

// connectStatus sends one CONNECT with the test credentials to a target
// that writes the peer address, and returns the status code and either
// the line the target wrote (200) or the whole answer.
func connectStatus(t *testing.T, proxyAddr, targetAddr string) (string, string) {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	req := "CONNECT " + targetAddr + " HTTP/1.1\r\nProxy-Authorization: Basic " + basicCreds(testUser, testPass) + "\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	status, err := br.ReadString('\n')
	if err != nil || len(status) < 12 {
		t.Fatalf("status line %q: %v", status, err)
	}
	if status[9:12] == "200" {
		_, _ = br.ReadString('\n')
		line, _ := br.ReadString('\n')
		return "200", line
	}
	rest, _ := io.ReadAll(br)
	return status[9:12], status + string(rest)
}

func basicCreds(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

// An upstream that dies mid-tunnel ends the client's tunnel: the client
// reads EOF (or a reset), it is not left hanging.
func TestUpstreamDiesMidTunnel(t *testing.T) {
	t.Parallel()
	echo := tcpTarget(t, target.Echo)
	ms, kill := startMicrosocks(t, "127.0.0.3", "u", "p-mid-tunnel")
	r := startRotor(t, func(c *config.Config) {
		c.Pool = nil
		c.Upstreams = []*pool.Upstream{mustUpstream(t, "socks5://u:p-mid-tunnel@"+ms)}
	})
	c, err := connectRaw(r.http, testUser, testPass, echo.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("echo through the upstream: %q, %v", buf, err)
	}
	// Kill microsocks: its sockets close, and so must the client's tunnel.
	kill()
	if _, err := io.ReadAll(c); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("client tunnel after the upstream died: %v", err)
	}
}

// fakeHTTPUpstream is an HTTP proxy that answers every request itself,
// recording its request line and Proxy-Authorization; status is what it
// answers.
func fakeHTTPUpstream(t *testing.T, status int) (addr string, seen chan [2]string) {
	t.Helper()
	seen = make(chan [2]string, 16)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- [2]string{r.Method + " " + r.RequestURI, strings.Join(r.Header.Values("Proxy-Authorization"), " | ")}
		if status == http.StatusProxyAuthRequired {
			w.Header().Set("Proxy-Authenticate", `Basic realm="upstream"`)
		}
		w.WriteHeader(status)
		io.WriteString(w, "fake-upstream\n")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), seen
}

// Absolute-form through an HTTP upstream entry goes to it as absolute-form
// (no CONNECT), with rotor's credentials for it and never the client's;
// an upstream that answers 407 is a 502 to the client, without the
// upstream's challenge, and counts toward taking it out.
func TestAbsoluteFormThroughHTTPUpstream(t *testing.T) {
	t.Parallel()
	ok, okSeen := fakeHTTPUpstream(t, http.StatusOK)
	r := startRotor(t, func(c *config.Config) {
		c.Pool = nil
		c.Upstreams = []*pool.Upstream{mustUpstream(t, "http://gw:gw-pass-q@"+ok+"?session=pass")}
	})
	c := proxyClient("http://"+testUser+"-session-abc:"+testPass+"@"+r.http, 1)
	defer c.CloseIdleConnections()
	got, err := getVia(context.Background(), c, "http://origin.example:8080/path?q=1")
	if err != nil || got != "fake-upstream" {
		t.Fatalf("%q, %v", got, err)
	}
	req := <-okSeen
	if req[0] != "GET http://origin.example:8080/path?q=1" || req[1] != "Basic "+basicCreds("gw-session-abc", "gw-pass-q") {
		t.Errorf("upstream got %q with Proxy-Authorization %q", req[0], req[1])
	}

	refusing, _ := fakeHTTPUpstream(t, http.StatusProxyAuthRequired)
	r2 := startRotor(t, func(c *config.Config) {
		c.Pool = nil
		c.Upstreams = []*pool.Upstream{mustUpstream(t, "http://gw:wrong-q@"+refusing)}
		c.HealthFall = 2
	})
	for i := 0; i < 2; i++ {
		resp, err := proxyClient(r2.httpURL(), 1).Get("http://origin.example/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("Proxy-Authenticate") != "" || strings.Contains(string(body), "wrong-q") {
			t.Fatalf("an upstream's 407: %d %v %q, want 502 without its challenge", resp.StatusCode, resp.Header, body)
		}
	}
	if src := r2.dialer.Pool().Sources()[0]; !src.Down() {
		t.Error("an upstream answering 407 twice (--health-fall 2) is still in rotation")
	}
}

// Upstream entries take tags in the pool file, and a user's pool= names
// them like any entry: bob leaves only through the "paid" upstream, alice
// only from the local address.
func TestUpstreamTagsAndUserPools(t *testing.T) {
	t.Parallel()
	peer := tcpTarget(t, target.WritePeer)
	exit := exitRotor(t, "127.0.0.5")
	r := startWithFiles(t,
		"127.0.0.2 own\nsocks5://"+testUser+":"+testPass+"@"+exit.sock+" paid\n",
		"alice:{PLAIN}pa pool=own\nbob:{PLAIN}pb pool=paid\n")
	ctx := context.Background()
	for i := 0; i < 4; i++ {
		if got, err := socksVia(ctx, r.sock, "bob", "pb", peer.Addr); err != nil || got != "127.0.0.5" {
			t.Fatalf("bob: %q, %v; want the paid upstream's 127.0.0.5", got, err)
		}
		if got, err := connectVia(ctx, r.http, "alice", "pa", peer.Addr); err != nil || got != "127.0.0.2" {
			t.Fatalf("alice: %q, %v; want 127.0.0.2", got, err)
		}
	}
}

// ?via=ADDR: connections to the upstream leave from that local address,
// which the upstream sees; an address the host does not have is refused
// at start, naming it.
func TestUpstreamVia(t *testing.T) {
	t.Parallel()
	peer := tcpTarget(t, target.WritePeer)
	exit := exitRotor(t, "127.0.0.5")
	r := startRotor(t, func(c *config.Config) {
		c.Pool = nil
		c.Upstreams = []*pool.Upstream{mustUpstream(t, "socks5://"+testUser+":"+testPass+"@"+exit.sock+"?via=127.0.0.7")}
	})
	if got, err := socksVia(context.Background(), r.sock, testUser, testPass, peer.Addr); err != nil || got != "127.0.0.5" {
		t.Fatalf("%q, %v", got, err)
	}
	if logs := exit.waitLog(`"client":"127.0.0.7:`); !strings.Contains(logs, `"client":"127.0.0.7:`) {
		t.Errorf("the upstream did not see rotor come from 127.0.0.7:\n%s", logs)
	}
	up := mustUpstream(t, "socks5://"+exit.sock+"?via=192.0.2.77")
	if _, err := pool.NewEntries(nil, []*pool.Upstream{up}, pool.RoundRobin); err == nil || !strings.Contains(err.Error(), "192.0.2.77") {
		t.Errorf("via= an address the host lacks: %v", err)
	}
}

// Active health through an upstream entry: --health-target is probed
// through it, so an upstream that dies leaves rotation without any client
// request failing on it, and comes back when it answers again.
func TestUpstreamActiveHealth(t *testing.T) {
	t.Parallel()
	ht := httpTarget(t)
	ms, kill := startMicrosocks(t, "127.0.0.3", "u", "p-health")
	r := startRotor(t, func(c *config.Config) {
		c.Pool = []netip.Prefix{pool.Single(netip.MustParseAddr("127.0.0.2"))}
		c.Upstreams = []*pool.Upstream{mustUpstream(t, "socks5://u:p-health@"+ms)}
		c.HealthTarget = "http://" + ht.Addr + "/ip"
		c.HealthInterval, c.HealthTimeout, c.HealthFall, c.HealthRise = 100*time.Millisecond, time.Second, 2, 1
	})
	up := r.dialer.Pool().Sources()[1]
	kill()
	waitFor(t, func() bool { return up.Down() }, "the dead upstream left rotation")
	// Back on the same port: the probes through it pass again.
	restarted := exec.Command(needMicrosocks(t), "-i", "127.0.0.1", "-p", portOf(ms), "-b", "127.0.0.3", "-u", "u", "-P", "p-health")
	if err := restarted.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = restarted.Process.Kill(); _ = restarted.Wait() })
	waitFor(t, func() bool { return !up.Down() }, "the upstream came back into rotation")
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10 s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// https:// upstream entries: TLS to the upstream (here a rotor's HTTPS
// listener), verified against ?ca=FILE. CONNECT, SOCKS5 and absolute-form
// all leave from the exit; an upstream whose certificate the CA did not
// sign is refused in the handshake and counts against it.
func TestHTTPSUpstream(t *testing.T) {
	t.Parallel()
	peer := tcpTarget(t, target.WritePeer)
	ht := httpTarget(t)
	exit := startTLSRotor(t, func(c *config.Config) {
		c.Pool = []netip.Prefix{pool.Single(netip.MustParseAddr("127.0.0.6"))}
	})
	entry := "https://" + testUser + ":" + testPass + "@" + exit.https + "?ca=" + exit.certFile
	r := startRotor(t, func(c *config.Config) {
		c.Pool = nil
		c.Upstreams = []*pool.Upstream{mustUpstream(t, entry)}
	})
	ctx := context.Background()
	c := proxyClient(r.httpURL(), 1)
	defer c.CloseIdleConnections()
	for name, do := range map[string]func() (string, error){
		"CONNECT":       func() (string, error) { return connectVia(ctx, r.http, testUser, testPass, peer.Addr) },
		"SOCKS5":        func() (string, error) { return socksVia(ctx, r.sock, testUser, testPass, peer.Addr) },
		"absolute-form": func() (string, error) { return getVia(ctx, c, "http://"+ht.Addr+"/ip") },
	} {
		for range 2 {
			if got, err := do(); err != nil || got != "127.0.0.6" {
				t.Fatalf("%s through the https:// upstream: %q, %v", name, got, err)
			}
		}
	}
	// Another CA: the upstream's certificate is refused.
	otherCA, _, _ := tlsFiles(t, t.TempDir(), "other")
	wrong := startRotor(t, func(c *config.Config) {
		c.Pool = nil
		c.Upstreams = []*pool.Upstream{mustUpstream(t, "https://"+exit.https+"?ca="+otherCA)}
		c.HealthFall = 1
	})
	if st, _ := connectStatus(t, wrong.http, peer.Addr); st != "502" {
		t.Errorf("an upstream signed by another CA: %s, want 502", st)
	}
	if !wrong.dialer.Pool().Sources()[0].Down() {
		t.Error("an upstream failing the TLS check is still in rotation")
	}
	if _, err := pool.ParseUpstream("http://x:1?ca=" + exit.certFile); err == nil {
		t.Error("ca= accepted on an http:// entry")
	}
}

package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
)

// connFrom connects to addr from the local address from.
func connFrom(t *testing.T, from, addr string) net.Conn {
	t.Helper()
	c, err := dialFrom(from).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	return c
}

// --proxy-protocol-from: a trusted balancer's connections carry the
// client's address in a PROXY header, and rotor uses it for
// --allow-clients and logs; the same header from anyone else is refused,
// and a trusted balancer's connection without one is closed.
func TestProxyProtocolFrom(t *testing.T) {
	t.Parallel()
	peer := tcpTarget(t, target.WritePeer)
	r := startRotor(t, func(c *config.Config) {
		// The balancer is 127.0.0.8; clients in 203.0.113.0/24 need no
		// credentials, and only a header can say a client is there.
		c.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.8/32")}
		c.AllowClients = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	})
	connect := "CONNECT " + peer.Addr + " HTTP/1.1\r\n\r\n"

	// v1 through the HTTP listener.
	c := connFrom(t, "127.0.0.8", r.http)
	io.WriteString(c, "PROXY TCP4 203.0.113.9 127.0.0.1 40001 443\r\n"+connect)
	br := bufio.NewReader(c)
	if line, _ := br.ReadString('\n'); !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("CONNECT from an allowed client behind the balancer: %q", line)
	}
	if blank, _ := br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("after the status line: %q", blank)
	}
	if got, _ := br.ReadString('\n'); !strings.HasPrefix(got, "127.0.0.") {
		t.Fatalf("tunnel read %q", got)
	}
	c.Close() // its line is logged when it ends
	// v2 through the SOCKS5 listener: no credentials needed either.
	c = connFrom(t, "127.0.0.8", r.sock)
	v2 := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c")
	v2 = append(v2, 203, 0, 113, 10, 127, 0, 0, 1, 0x9c, 0x42, 0x04, 0x38)
	ap := netip.MustParseAddrPort(peer.Addr)
	c.Write(append(append(v2, 5, 1, 0), socksConnect(ap)...))
	reply := make([]byte, 12)
	if _, err := io.ReadFull(c, reply); err != nil || reply[1] != 0 || reply[3] != 0 {
		t.Fatalf("SOCKS5 behind the balancer: %v %v", reply, err)
	}
	c.Close()
	logs := r.waitLog(`"client":"203.0.113.9:40001"`, `"client":"203.0.113.10:40002"`)
	if !strings.Contains(logs, `"client":"203.0.113.9:40001"`) || !strings.Contains(logs, `"client":"203.0.113.10:40002"`) {
		t.Errorf("logs do not name the clients from the headers:\n%s", logs)
	}

	// The same header from a peer that is not the balancer: refused by
	// HTTP's parser, and the log names the real peer.
	c = connFrom(t, "127.0.0.9", r.http)
	io.WriteString(c, "PROXY TCP4 203.0.113.9 127.0.0.1 40002 443\r\n"+connect)
	if line, _ := bufio.NewReader(c).ReadString('\n'); !strings.HasPrefix(line, "HTTP/1.1 400") {
		t.Errorf("a PROXY header from an untrusted peer got %q, want 400", line)
	}
	c = connFrom(t, "127.0.0.9", r.sock)
	c.Write(append(v2, 5, 1, 0))
	if b, _ := io.ReadAll(c); len(b) > 0 && b[0] == 5 && b[1] == 0 {
		t.Errorf("a v2 header from an untrusted peer was taken as SOCKS5: %v", b)
	}
	// The balancer without a header: closed, logged.
	c = connFrom(t, "127.0.0.8", r.http)
	io.WriteString(c, connect)
	if b, _ := io.ReadAll(c); len(b) != 0 {
		t.Errorf("a trusted peer without a header got %q", b)
	}
	logs = r.waitLog("no valid PROXY protocol header")
	if !strings.Contains(logs, "no valid PROXY protocol header") || strings.Contains(logs, `"client":"203.0.113.9:40002"`) {
		t.Errorf("log lines:\n%s", logs)
	}
}

func needHAProxy(t *testing.T) string { t.Helper(); return needBinary(t, "haproxy", "haproxy") }

// freePort is a loopback port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// A real HAProxy in TCP mode with send-proxy-v2 in front of two rotors,
// each with two addresses: clients through it rotate over all four, the
// rotors log the clients' own addresses, and stopping one rotor loses no
// request once HAProxy's check has marked it down.
func TestBehindHAProxy(t *testing.T) {
	t.Parallel()
	bin := needHAProxy(t)
	ht := httpTarget(t)
	var rotors []*rotor
	for _, pair := range [][]string{{"127.0.0.2", "127.0.0.3"}, {"127.0.0.4", "127.0.0.5"}} {
		rotors = append(rotors, startRotor(t, func(c *config.Config) {
			c.Pool = []netip.Prefix{netip.MustParsePrefix(pair[0] + "/32"), netip.MustParsePrefix(pair[1] + "/32")}
			c.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		}))
	}
	frontAddr := startHAProxy(t, bin, rotors[0].http, rotors[1].http)

	ctx := context.Background()
	get := func() (string, error) {
		c := proxyClient("http://"+testUser+":"+testPass+"@"+frontAddr, 1)
		defer c.CloseIdleConnections()
		c.Transport.(*http.Transport).DisableKeepAlives = true
		return getVia(ctx, c, "http://"+ht.Addr+"/ip")
	}
	seen := map[string]int{}
	for i := 0; i < 40; i++ {
		got, err := get()
		if err != nil {
			t.Fatalf("request %d through HAProxy: %v", i, err)
		}
		seen[got]++
	}
	wantEach(t, seen, 10)
	for _, r := range rotors {
		// The rotors see HAProxy's connections, and log the clients'.
		if logs := r.log.String(); !strings.Contains(logs, `"client":"127.0.0.1:`) || strings.Contains(logs, "PROXY protocol header") {
			t.Errorf("rotor log lines:\n%s", logs)
		}
	}

	// Stop one rotor accepting; once HAProxy's check has marked it down
	// (2 x 100 ms), every request succeeds from the other's addresses.
	rotors[1].stopAccepting()
	time.Sleep(time.Second)
	for i := 0; i < 20; i++ {
		got, err := get()
		if err != nil {
			t.Fatalf("request %d after one rotor stopped: %v", i, err)
		}
		if got != "127.0.0.2" && got != "127.0.0.3" {
			t.Fatalf("request %d left from %s, a stopped rotor's address", i, got)
		}
	}
}

// waitListen waits for something to accept on addr.
func waitListen(t *testing.T, addr string, log *syncBuffer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listening on %s: %v\n%s", addr, err, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A trusted balancer's connection that sends nothing, or half a header,
// is closed at the handshake timeout: the header read is bounded in time
// as in size.
func TestProxyProtocolStall(t *testing.T) {
	t.Parallel()
	r := startRotor(t, func(c *config.Config) {
		c.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.8/32")}
		c.HandshakeTimeout = 200 * time.Millisecond
	})
	for _, send := range []string{"", "PROXY TCP4 203.0.113.9 ", "\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x01"} {
		c := connFrom(t, "127.0.0.8", r.http)
		io.WriteString(c, send)
		if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
			t.Errorf("after %q: %q, %v; want a close at the handshake timeout", send, b, err)
		}
	}
	refusals := func() int64 { return int64(strings.Count(r.log.String(), "no valid PROXY protocol header")) }
	if n := waitCount(refusals, 3); n != 3 {
		t.Errorf("%d refusals logged, want 3", n)
	}
}

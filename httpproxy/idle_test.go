package httpproxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/rotor-proxy/rotor/internal/testkit"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
)

// Idle upstream connections are keyed by the address dialled, not its
// spelling: 20,000 sequential Connection: close requests to spellings of
// one origin leave at most one idle connection per source, under the cap.
func TestIdleKeyedByAddress(t *testing.T) {
	o := origin(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	_, port, _ := net.SplitHostPort(o)
	proxy, s := testProxy(t, func(opt *Options) { opt.MaxIdleConns = 64 })
	spellings := []string{"127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.0.1", "0x7f.0.0.1"}
	n := 20000
	if testing.Short() {
		n = 1000
	}
	for i := range n {
		host := spellings[i%len(spellings)] + ":" + port
		rc := dialProxy(t, proxy)
		resp, b, err := rc.do("GET http://"+host+"/ HTTP/1.1\r\nHost: "+host+"\r\n"+authHeader+"Connection: close\r\n\r\n", http.MethodGet)
		rc.c.Close()
		if err != nil || resp.StatusCode != 200 || b != "ok" {
			t.Fatalf("request %d to %s: %v %v %q", i, host, resp, err, b)
		}
	}
	if idle := s.idle.idle(); idle > 2 {
		t.Fatalf("%d idle upstream connections after %d requests to one origin from 2 sources, want at most 2", idle, n)
	}
}

// The global cap holds across many origins, and the oldest go first.
func TestIdleCap(t *testing.T) {
	proxy, s := testProxy(t, func(opt *Options) { opt.MaxIdleConns = 3; opt.MaxIdlePerSource = 2 })
	for range 8 {
		o := origin(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
		rc := dialProxy(t, proxy)
		if _, _, err := rc.do("GET http://"+o+"/ HTTP/1.1\r\nHost: "+o+"\r\n"+authHeader+"\r\n", http.MethodGet); err != nil {
			t.Fatal(err)
		}
		if idle := s.idle.idle(); idle > 3 {
			t.Fatalf("%d idle connections, cap 3", idle)
		}
	}
	if idle := s.idle.idle(); idle != 3 {
		t.Fatalf("%d idle connections after 8 origins, want the cap, 3", idle)
	}
}

// Idle upstream connections count against the connection limit, and
// under pressure the oldest is closed to admit a new client instead of
// refusing it.
func TestIdleYieldsToNewClients(t *testing.T) {
	limit := serve.NewLimiter(2, zerolog.Nop())
	proxy, s := testProxy(t, func(opt *Options) { opt.Limiter = limit })
	o := origin(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	rc := dialProxy(t, proxy)
	if _, _, err := rc.do("GET http://"+o+"/ HTTP/1.1\r\nHost: "+o+"\r\n"+authHeader+"Connection: close\r\n\r\n", http.MethodGet); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return s.Active() == 0 }, "the client connection to close")
	if s.idle.idle() != 1 {
		t.Fatalf("%d idle, want 1", s.idle.idle())
	}
	// Two new clients: the second needs the idle connection's slot.
	a, b := dialProxy(t, proxy), dialProxy(t, proxy)
	// Both admitted before either sends a request: the second one's slot
	// can only have come from closing the idle connection.
	waitFor(t, func() bool { return s.Active() == 2 }, "both clients admitted")
	if s.idle.idle() != 0 {
		t.Fatalf("%d idle after the limiter reclaimed a slot, want 0", s.idle.idle())
	}
	for i, rc := range []*rawClient{a, b} {
		resp, body, err := rc.do("GET http://"+o+"/x HTTP/1.1\r\nHost: "+o+"\r\n"+authHeader+"\r\n", http.MethodGet)
		if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(body, "ok") {
			t.Fatalf("client %d: %v %v %q", i, resp, err, body)
		}
	}
}

// A source that leaves rotation takes its idle connections with it.
func TestDropSourceClosesIdle(t *testing.T) {
	o := origin(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	proxy, s := testProxy(t, nil)
	for range 2 {
		rc := dialProxy(t, proxy)
		if _, _, err := rc.do("GET http://"+o+"/ HTTP/1.1\r\nHost: "+o+"\r\n"+authHeader+"\r\n", http.MethodGet); err != nil {
			t.Fatal(err)
		}
	}
	if s.idle.idle() != 2 {
		t.Fatalf("%d idle, want 2", s.idle.idle())
	}
	srcs := s.opts.Dialer.Pool().Sources()
	s.DropSource(srcs[0])
	if s.idle.idle() != 1 {
		t.Fatalf("%d idle after dropping one source, want 1", s.idle.idle())
	}
}

// A connection that idled past the deadline its last exchange set is
// still reused: the deadline belongs to that exchange, not to the idle
// wait.
func TestIdleReusedAfterDeadline(t *testing.T) {
	o, conns := rawOrigin(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for {
			if _, _, err := readHeadRaw(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	p, err := testkit.Pool([]netip.Addr{netip.MustParseAddr("127.0.0.2")}, pool.RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	proxy, _ := testProxy(t, func(opt *Options) {
		opt.Dialer = pool.NewDialer(p, pool.DialerOptions{Timeout: 5 * time.Second})
		opt.TunnelIdleTimeout = 100 * time.Millisecond
	})
	rc := dialProxy(t, proxy)
	for i := range 2 {
		if _, b, err := rc.do("GET http://"+o+"/ HTTP/1.1\r\nHost: "+o+"\r\n"+authHeader+"\r\n", http.MethodGet); err != nil || b != "ok" {
			t.Fatalf("request %d: %v %q", i, err, b)
		}
		time.Sleep(300 * time.Millisecond) // past the 100 ms deadline of the exchange
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("origin saw %d connections for 2 sequential requests, want 1 (reused)", n)
	}
}

// idle is how many connections are idle now.
func (p *idlePool) idle() int { return int(p.n.Load()) }

package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/internal/testkit"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const user, pass = "u", "p"

// startProxy runs a Server with credentials on a loopback pool of two.
func startProxy(t *testing.T, dialTimeout time.Duration) string {
	t.Helper()
	addr, _ := testProxy(t, func(o *Options) {
		o.Dialer = pool.NewDialer(o.Dialer.Pool(), pool.DialerOptions{Timeout: dialTimeout, Resolver: target.OfflineResolver()})
		o.Access = testkit.Access(testkit.OneUser(user, pass))
	})
	return addr
}

// origin runs an HTTP server on 127.0.0.1 with handler h.
func origin(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func client(proxyAddr string) *http.Client {
	u, _ := url.Parse("http://" + user + ":" + pass + "@" + proxyAddr)
	return &http.Client{
		Transport:     &http.Transport{Proxy: http.ProxyURL(u)},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}
}

// Hop-by-hop headers never reach the origin, nor anything that names the
// client; end-to-end headers do.
func TestHopByHopHeadersRemoved(t *testing.T) {
	var got http.Header
	var gotTE []string
	o := origin(t, func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		gotTE = r.TransferEncoding
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "must not reach the client")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-End", "kept")
	})
	proxy := startProxy(t, 5*time.Second)
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	fmt.Fprintf(c, "POST http://%s/x HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n"+
		"Proxy-Connection: keep-alive\r\nConnection: X-Custom-Hop, keep-alive\r\nX-Custom-Hop: secret\r\n"+
		"Keep-Alive: timeout=5\r\nTE: trailers, deflate\r\nUpgrade: websocket\r\nTrailer: X-T\r\n"+
		"X-Forwarded-For: 198.51.100.1\r\nX-End-To-End: yes\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"5\r\nhello\r\n0\r\nX-T: v\r\n\r\n", o, o, auth)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for _, h := range []string{"Proxy-Authorization", "Proxy-Connection", "Connection", "X-Custom-Hop", "Keep-Alive", "Upgrade", "Trailer", "Via"} {
		if v, ok := got[h]; ok {
			t.Errorf("origin got hop-by-hop %s: %q", h, v)
		}
	}
	if te := got.Get("Te"); te != "trailers" {
		t.Errorf("TE = %q, want only \"trailers\" kept", te)
	}
	if got.Get("X-End-To-End") != "yes" {
		t.Error("end-to-end header lost")
	}
	if xff := got.Values("X-Forwarded-For"); len(xff) != 1 || xff[0] != "198.51.100.1" {
		t.Errorf("X-Forwarded-For = %q, want the client's own value untouched, nothing added", xff)
	}
	if len(gotTE) != 1 || gotTE[0] != "chunked" {
		t.Errorf("origin saw transfer encoding %v, want the body re-framed as chunked", gotTE)
	}
	if resp.Header.Get("X-Hop") != "" || resp.Header.Get("Keep-Alive") != "" || resp.Header.Get("X-End") != "kept" {
		t.Errorf("response headers: %v", resp.Header)
	}
}

// Bodies stream both ways, of any size, chunked or not.
func TestStreamingBodies(t *testing.T) {
	o := origin(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/chunked" {
			for i := 0; i < 3; i++ {
				fmt.Fprintf(w, "part%d;", i)
				w.(http.Flusher).Flush()
			}
			return
		}
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d", n)
	})
	c := client(startProxy(t, 5*time.Second))
	defer c.CloseIdleConnections()

	const size = 20 << 20
	// Unknown length: the client sends chunked.
	resp, err := c.Post("http://"+o+"/up", "application/octet-stream", io.LimitReader(zeros{}, size))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != fmt.Sprint(size) {
		t.Fatalf("origin received %s bytes, want %d", body, size)
	}
	resp, err = c.Get("http://" + o + "/chunked")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "part0;part1;part2;" || len(resp.TransferEncoding) == 0 {
		t.Fatalf("got %q (TE %v), want the chunked body", body, resp.TransferEncoding)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// Redirects go back to the client; the proxy never follows them.
func TestRedirectsNotFollowed(t *testing.T) {
	var hits sync.Map
	o := origin(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Store(r.URL.Path, true)
		if r.URL.Path == "/from" {
			http.Redirect(w, r, "/to", http.StatusFound)
		}
	})
	c := client(startProxy(t, 5*time.Second))
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://" + o + "/from")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("status %d, want 302", resp.StatusCode)
	}
	if _, ok := hits.Load("/to"); ok {
		t.Fatal("the proxy followed the redirect")
	}
}

// Accept-Encoding passes through; the proxy neither adds gzip nor
// decompresses.
func TestNoTransparentCompression(t *testing.T) {
	var ae string
	o := origin(t, func(w http.ResponseWriter, r *http.Request) { ae = r.Header.Get("Accept-Encoding") })
	c := client(startProxy(t, 5*time.Second))
	defer c.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, "http://"+o+"/", nil)
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := c.Transport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ae != "identity" {
		t.Fatalf("origin saw Accept-Encoding %q, want identity", ae)
	}
}

func TestStatusForFailures(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	proxy := startProxy(t, 5*time.Second)
	c := client(proxy)
	defer c.CloseIdleConnections()
	for _, tc := range []struct {
		url  string
		want int
	}{
		{"http://" + closed + "/", http.StatusBadGateway},
		{"http://name.invalid/", http.StatusBadGateway},
		{"http://[::1]:1/", http.StatusBadGateway}, // IPv4-only pool
	} {
		resp, err := c.Get(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want || bytes.Count(body, []byte("\n")) != 1 {
			t.Errorf("%s: %d %q, want %d and a one-line body", tc.url, resp.StatusCode, body, tc.want)
		}
	}
	for _, bad := range []string{"127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:abc"} {
		status := rawConnect(t, proxy, bad)
		if status != http.StatusBadRequest {
			t.Errorf("CONNECT %s: status %d, want 400", bad, status)
		}
	}
}

// A dial that exceeds the dial timeout is 504. 127.0.0.1 answers at once,
// so the timeout here is shorter than any connect can be.
func TestDialTimeoutIs504(t *testing.T) {
	o := origin(t, func(http.ResponseWriter, *http.Request) {})
	proxy := startProxy(t, time.Nanosecond)
	if status := rawConnect(t, proxy, o); status != http.StatusGatewayTimeout {
		t.Fatalf("CONNECT: status %d, want 504", status)
	}
}

func rawConnect(t *testing.T, proxy, target string) int {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", target, target, auth)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestParseBasic(t *testing.T) {
	enc := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct {
		h          string
		user, pass string
		ok         bool
	}{
		{"Basic " + enc("a:b"), "a", "b", true},
		{"basic " + enc("a:b:c"), "a", "b:c", true},
		{"BASIC " + enc("a:"), "a", "", true},
		{"Basic " + enc("nocolon"), "", "", false},
		{"Basic !!!", "", "", false},
		{"Bearer " + enc("a:b"), "", "", false},
		{"", "", "", false},
	} {
		u, p, ok := parseBasic(tc.h)
		if u != tc.user || p != tc.pass || ok != tc.ok {
			t.Errorf("parseBasic(%q) = %q %q %v", tc.h, u, p, ok)
		}
	}
	if !strings.Contains(quote("a\r\nb"), `\x0d\x0a`) {
		t.Error("quote keeps control bytes")
	}
}

// An origin that accepts and never answers gets 504 at the header
// timeout; the client is not held forever.
func TestSilentOriginIs504(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c // hold it open, say nothing
		}
	}()
	defer func() {
		ln.Close()
		close(accepted)
		for c := range accepted {
			c.Close()
		}
	}()
	p, err := testkit.Pool([]netip.Addr{netip.MustParseAddr("127.0.0.2")}, pool.RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	hits := &serve.Hits{}
	s := New(Options{Dialer: pool.NewDialer(p, pool.DialerOptions{Timeout: 5 * time.Second}), HeaderTimeout: 300 * time.Millisecond,
		Log: zerolog.Nop(), Hits: hits})
	pl, _ := net.Listen("tcp", "127.0.0.1:0")
	go func() { _ = s.Serve(pl) }()
	defer closeNow(s)
	start := time.Now()
	status := rawStatus(t, pl.Addr().String(), "GET http://"+ln.Addr().String()+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
	if status != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504", status)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("504 after %s, want about the 300ms header timeout", d)
	}
	// The hit is counted when the request is logged, just after the 504
	// is written: wait for it.
	for deadline := time.Now().Add(2 * time.Second); hits.Load(serve.ResponseTimeout) != 1 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := hits.Load(serve.ResponseTimeout); n != 1 {
		t.Fatalf("counted %d response timeouts, want 1", n)
	}
}

// closeNow shuts s down without a drain: every connection closes at once.
func closeNow(s *Server) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = s.Shutdown(ctx)
}

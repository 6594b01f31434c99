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
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/rotor-proxy/rotor/auth"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/internal/testkit"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
)

// Two users of the hostile-origin tests.
var users = map[string]string{"alice": "alice-pass", "bob": "bob-pass"}

// logBuf is a concurrency-safe log sink for tests that read log lines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testProxy runs a Server on a loopback pool of 127.0.0.2-3 with the users
// above plus u/p; set may change the options first.
func testProxy(t *testing.T, set func(*Options)) (string, *Server) {
	t.Helper()
	p, err := testkit.Pool([]netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")}, pool.RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	specs := []auth.UserSpec{auth.PlainUser(user, pass)}
	for n, pw := range users {
		specs = append(specs, auth.PlainUser(n, pw))
	}
	us, err := auth.Build(specs, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Dialer: pool.NewDialer(p, pool.DialerOptions{Timeout: 5 * time.Second, Resolver: target.OfflineResolver()}),
		Access: testkit.Access(us), Log: zerolog.Nop()}
	if set != nil {
		set(&o)
	}
	s := New(o)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		<-done
	})
	return ln.Addr().String(), s
}

func basic(name, pw string) string {
	return "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(name+":"+pw)) + "\r\n"
}

// rawClient is one client connection to the proxy.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialProxy(t *testing.T, proxy string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawClient{t, c, bufio.NewReader(c)}
}

// do sends raw and reads one response to a request of method.
func (rc *rawClient) do(raw, method string) (*http.Response, string, error) {
	if _, err := io.WriteString(rc.c, raw); err != nil {
		return nil, "", err
	}
	resp, err := http.ReadResponse(rc.br, &http.Request{Method: method})
	if err != nil {
		return nil, "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body), err
}

// readHeadRaw reads a request head from br: its lines, and the
// Content-Length it declares.
func readHeadRaw(br *bufio.Reader) (lines []string, length int, err error) {
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return nil, 0, err
		}
		l = strings.TrimRight(l, "\r\n")
		if l == "" {
			return lines, length, nil
		}
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, "Content-Length") {
			fmt.Sscan(strings.TrimSpace(v), &length)
		}
		lines = append(lines, l)
	}
}

// hostileOrigin answers every request with X-Echo: its path, and then,
// by the request's path, does what a broken or lenient origin does:
//
//	/twice/...  answers twice (the second response names "evil")
//	/head/...   (HEAD) a body behind the head, shaped as a response
//	/204/...    a 204 with a response behind it
//	/304/...    a 304 with a response behind it
//	/lenient/... ignores a GET body and reads it as the next request
func hostileOrigin(t *testing.T) string {
	addr, _ := rawOrigin(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for {
			lines, length, err := readHeadRaw(br)
			if err != nil {
				return
			}
			method, rest, _ := strings.Cut(lines[0], " ")
			path, _, _ := strings.Cut(rest, " ")
			if !strings.HasPrefix(path, "/lenient/") && length > 0 {
				if _, err := io.CopyN(io.Discard, br, int64(length)); err != nil {
					return
				}
			}
			evil := "HTTP/1.1 200 OK\r\nX-Echo: evil" + path + "\r\nContent-Length: 4\r\n\r\nevil"
			ok := "HTTP/1.1 200 OK\r\nX-Echo: " + path + "\r\nContent-Length: 2\r\n\r\nok"
			var out string
			switch {
			case strings.HasPrefix(path, "/twice/"):
				out = ok + evil
			case strings.HasPrefix(path, "/head/") && method == http.MethodHead:
				out = "HTTP/1.1 200 OK\r\nX-Echo: " + path + "\r\nContent-Length: " + fmt.Sprint(len(evil)) + "\r\n\r\n" + evil
			case strings.HasPrefix(path, "/204/"):
				out = "HTTP/1.1 204 No Content\r\nX-Echo: " + path + "\r\n\r\n" + evil
			case strings.HasPrefix(path, "/304/"):
				out = "HTTP/1.1 304 Not Modified\r\nX-Echo: " + path + "\r\n\r\n" + evil
			default:
				out = ok
			}
			if _, err := io.WriteString(c, out); err != nil {
				return
			}
		}
	})
	return addr
}

// Over 1,000 rounds against origins that answer twice, send bodies after
// HEAD, 204 and 304, or read an ignored GET body as a second request,
// every response a client gets is the one to its own request: none of
// alice's smuggled responses reaches bob, nor a later request of hers.
func TestNoResponseReachesTheWrongRequest(t *testing.T) {
	o := hostileOrigin(t)
	proxy, _ := testProxy(t, nil)
	alice, bob := dialProxy(t, proxy), dialProxy(t, proxy)
	rounds := 1000
	if testing.Short() {
		rounds = 200
	}
	kinds := []string{"twice", "head", "204", "304", "lenient"}
	wrong := 0
	for i := range rounds {
		kind := kinds[i%len(kinds)]
		path := fmt.Sprintf("/%s/alice/%d", kind, i)
		method, body := http.MethodGet, ""
		switch kind {
		case "head":
			method = http.MethodHead
		case "lenient":
			body = "GET /lenient/evil/" + fmt.Sprint(i) + " HTTP/1.1\r\nHost: " + o + "\r\n\r\n"
		}
		raw := method + " http://" + o + path + " HTTP/1.1\r\nHost: " + o + "\r\n" + basic("alice", users["alice"])
		if body != "" {
			raw += "Content-Length: " + fmt.Sprint(len(body)) + "\r\n"
		}
		resp, _, err := alice.do(raw+"\r\n"+body, method)
		if err != nil {
			t.Fatalf("round %d alice: %v", i, err)
		}
		if got := resp.Header.Get("X-Echo"); got != path {
			t.Errorf("round %d: alice's %s got the response for %q", i, path, got)
			wrong++
		}
		bpath := fmt.Sprintf("/plain/bob/%d", i)
		resp, b, err := bob.do("GET http://"+o+bpath+" HTTP/1.1\r\nHost: "+o+"\r\n"+basic("bob", users["bob"])+"\r\n", http.MethodGet)
		if err != nil {
			t.Fatalf("round %d bob: %v", i, err)
		}
		if got := resp.Header.Get("X-Echo"); got != bpath || b != "ok" {
			t.Errorf("round %d: bob's %s got the response for %q (%q)", i, bpath, got, b)
			wrong++
		}
		if wrong > 5 {
			t.Fatal("giving up")
		}
	}
}

// Upstream connections are never shared between users: alice's idle
// connection is not used for bob's request to the same origin.
func TestUpstreamNotSharedBetweenUsers(t *testing.T) {
	var mu sync.Mutex
	peers := map[string]bool{}
	o, _ := rawOrigin(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for {
			if _, _, err := readHeadRaw(br); err != nil {
				return
			}
			mu.Lock()
			peers[c.RemoteAddr().String()] = true
			mu.Unlock()
			body := c.RemoteAddr().String()
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		}
	})
	p, err := testkit.Pool([]netip.Addr{netip.MustParseAddr("127.0.0.2")}, pool.RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	proxy, _ := testProxy(t, func(opt *Options) {
		opt.Dialer = pool.NewDialer(p, pool.DialerOptions{Timeout: 5 * time.Second})
	})
	conn := map[string]string{}
	for i := range 6 {
		name := []string{"alice", "bob"}[i%2]
		rc := dialProxy(t, proxy)
		_, b, err := rc.do("GET http://"+o+"/ HTTP/1.1\r\nHost: "+o+"\r\n"+basic(name, users[name])+"\r\n", http.MethodGet)
		if err != nil {
			t.Fatal(err)
		}
		if prev, ok := conn[name]; ok && prev != b {
			t.Errorf("%s's request %d used a new upstream connection (%s, was %s)", name, i, b, prev)
		}
		conn[name] = b
	}
	if conn["alice"] == conn["bob"] {
		t.Fatalf("alice and bob shared upstream connection %s", conn["alice"])
	}
}

// A response with both Content-Length and Transfer-Encoding is forwarded
// as chunked and its connection is not reused.
func TestCLAndTEResponseNotReused(t *testing.T) {
	o, conns := rawOrigin(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for {
			if _, _, err := readHeadRaw(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
		}
	})
	proxy, _ := testProxy(t, nil)
	rc := dialProxy(t, proxy)
	for i := range 4 {
		resp, b, err := rc.do("GET http://"+o+"/ HTTP/1.1\r\nHost: "+o+"\r\n"+authHeader+"\r\n", http.MethodGet)
		if err != nil || b != "ok" || resp.ContentLength != -1 {
			t.Fatalf("request %d: %v %q, content length %d", i, err, b, resp.ContentLength)
		}
	}
	if n := conns.Load(); n != 4 {
		t.Fatalf("origin saw %d connections for 4 CL+TE responses, want 4 (no reuse)", n)
	}
}

// staleOrigin answers the first request on each connection, then closes
// the connection when the next request has arrived without answering it:
// a keep-alive connection gone stale just as it was reused. It counts the
// requests it received by method.
func staleOrigin(t *testing.T) (string, *sync.Map) {
	var seen sync.Map
	addr, _ := rawOrigin(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for n := 0; ; n++ {
			lines, length, err := readHeadRaw(br)
			if err != nil {
				return
			}
			if length > 0 {
				io.CopyN(io.Discard, br, int64(length))
			}
			method, _, _ := strings.Cut(lines[0], " ")
			v, _ := seen.LoadOrStore(method, new(atomic.Int64))
			v.(*atomic.Int64).Add(1)
			if n == 1 {
				return // close without a byte of response
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	return addr, &seen
}

func seenCount(m *sync.Map, method string) int64 {
	if v, ok := m.Load(method); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

// After a stale keep-alive connection fails a request with no response
// byte, a GET (idempotent) or a POST with Idempotency-Key is sent again on
// a new connection; a plain POST is never sent twice: its client gets 502.
func TestRetryOnlyWhatIsSafe(t *testing.T) {
	for _, tc := range []struct {
		name, method, extra string
		wantStatus          int
		wantSeen            int64 // requests of method the origin received
	}{
		{"GET", http.MethodGet, "", 200, 3},
		{"POST", http.MethodPost, "", 502, 2},
		{"POST with Idempotency-Key", http.MethodPost, "Idempotency-Key: k1\r\n", 200, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, seen := staleOrigin(t)
			p, err := testkit.Pool([]netip.Addr{netip.MustParseAddr("127.0.0.2")}, pool.RoundRobin)
			if err != nil {
				t.Fatal(err)
			}
			proxy, _ := testProxy(t, func(opt *Options) { opt.Dialer = pool.NewDialer(p, pool.DialerOptions{Timeout: 5 * time.Second}) })
			rc := dialProxy(t, proxy)
			raw := tc.method + " http://" + o + "/ HTTP/1.1\r\nHost: " + o + "\r\n" + authHeader + tc.extra + "\r\n"
			if resp, _, err := rc.do(raw, tc.method); err != nil || resp.StatusCode != 200 {
				t.Fatalf("first request: %v", err)
			}
			resp, _, err := rc.do(raw, tc.method)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if n := seenCount(seen, tc.method); n != tc.wantSeen {
				t.Errorf("origin received %d %s requests, want %d", n, tc.method, tc.wantSeen)
			}
		})
	}
}

// Requests whose method gives a body no meaning (GET, HEAD, OPTIONS,
// DELETE, TRACE) are sent on a connection that is not reused after.
func TestIgnorableBodyConnectionNotReused(t *testing.T) {
	o, conns := rawOrigin(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for {
			_, length, err := readHeadRaw(br)
			if err != nil {
				return
			}
			io.CopyN(io.Discard, br, int64(length))
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	proxy, _ := testProxy(t, nil)
	rc := dialProxy(t, proxy)
	for _, m := range []string{"GET", "DELETE", "OPTIONS", "TRACE"} {
		raw := m + " http://" + o + "/ HTTP/1.1\r\nHost: " + o + "\r\n" + authHeader + "Content-Length: 3\r\n\r\nabc"
		if resp, _, err := rc.do(raw, m); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v", m, err)
		}
	}
	if n := conns.Load(); n != 4 {
		t.Fatalf("origin saw %d connections for 4 requests with ignorable bodies, want 4", n)
	}
}

// endless writes an endless stream of b (after prefix) until the peer
// stops reading, counting what it wrote.
func endless(c net.Conn, prefix string, b byte, written *atomic.Int64) {
	io.WriteString(c, prefix)
	chunk := bytes.Repeat([]byte{b}, 32<<10)
	for written.Load() < 256<<20 {
		n, err := c.Write(chunk)
		written.Add(int64(n))
		if err != nil {
			return
		}
	}
}

// An origin that sends an endless status line, header line, run of header
// lines, chunk-size line or trailer, or a reason phrase with a control
// byte, gets its client a 502 (or a cut, once a body has started), and
// rotor allocates no more than about a megabyte for it, whatever it sends.
func TestHostileOriginBounded(t *testing.T) {
	for _, tc := range []struct {
		name, prefix string
		fill         byte
		status       int // 0: the response started; the client sees a cut
	}{
		{"endless status line", "HTTP/1.1 200 ", 'a', 502},
		{"endless header line", "HTTP/1.1 200 OK\r\nX-A: ", 'a', 502},
		{"endless header lines", "HTTP/1.1 200 OK\r\n", '\n', 502},
		{"endless chunk-size line", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1", '0', 0},
		{"endless trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ", 'a', 0},
		{"control byte in reason", "HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n", 0, 502},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var written atomic.Int64
			prefix := tc.prefix
			if tc.name == "endless header lines" {
				prefix = "HTTP/1.1 200 OK\r\n"
			}
			o, _ := rawOrigin(t, func(c *net.TCPConn) {
				br := bufio.NewReader(c)
				if _, _, err := readHeadRaw(br); err != nil {
					return
				}
				if tc.fill == 0 {
					io.WriteString(c, prefix)
					io.Copy(io.Discard, br)
					return
				}
				if tc.name == "endless header lines" {
					io.WriteString(c, prefix)
					line := []byte("X-A: 1\r\n")
					for written.Load() < 256<<20 {
						n, err := c.Write(bytes.Repeat(line, 4096))
						written.Add(int64(n))
						if err != nil {
							return
						}
					}
					return
				}
				endless(c, prefix, tc.fill, &written)
			})
			proxy, _ := testProxy(t, nil)
			var before, after runtimeAlloc
			before.read()
			rc := dialProxy(t, proxy)
			resp, _, err := rc.do("GET http://"+o+"/ HTTP/1.1\r\nHost: "+o+"\r\n"+authHeader+"\r\n", http.MethodGet)
			after.read()
			switch {
			case tc.status != 0 && (err != nil || resp.StatusCode != tc.status):
				t.Fatalf("got %v %v, want status %d", resp, err, tc.status)
			case tc.status == 0 && err == nil:
				t.Fatalf("got a complete response %d, want a cut", resp.StatusCode)
			}
			if grew := after.total - before.total; grew > 4<<20 {
				t.Fatalf("rotor allocated %d bytes while the origin sent %d", grew, written.Load())
			}
		})
	}
}

// A client's endless header line, run of header lines, chunk-size line
// or trailer is refused (431 or 400) without rotor holding more than the
// head cap for it.
func TestHostileClientBounded(t *testing.T) {
	var got atomic.Int64
	o := origin(t, func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err == nil {
			got.Add(1)
		}
	})
	proxy, _ := testProxy(t, nil)
	head := "POST http://" + o + "/ HTTP/1.1\r\nHost: " + o + "\r\n" + authHeader
	for _, tc := range []struct {
		name, prefix string
		fill         byte
		status       int
	}{
		{"endless header line", head + "X-A: ", 'a', 431},
		{"endless chunk-size line", head + "Transfer-Encoding: chunked\r\n\r\n1", '0', 400},
		{"endless trailer", head + "Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: ", 'a', 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtimeAlloc
			before.read()
			c, err := net.Dial("tcp", proxy)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			var written atomic.Int64
			go endless(c, tc.prefix, tc.fill, &written)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			after.read()
			if err != nil || resp.StatusCode != tc.status {
				t.Fatalf("got %v %v, want %d", resp, err, tc.status)
			}
			c.Close()
			if grew := after.total - before.total; grew > 4<<20 {
				t.Fatalf("rotor allocated %d bytes while the client sent %d", grew, written.Load())
			}
		})
	}
	if got.Load() != 0 {
		t.Fatal("the origin received a complete request")
	}
}

// Trailer fields that frame, route or authenticate are dropped both ways;
// others pass.
func TestForbiddenTrailersDropped(t *testing.T) {
	var reqTrailer atomic.Value
	o, _ := rawOrigin(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		reqTrailer.Store(req.Trailer.Clone())
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"+
			"X-Ok: 1\r\nContent-Length: 99\r\nSet-Cookie: s=1\r\nWWW-Authenticate: Basic\r\n\r\n")
	})
	proxy, _ := testProxy(t, nil)
	rc := dialProxy(t, proxy)
	resp, body, err := rc.do("POST http://"+o+"/ HTTP/1.1\r\nHost: "+o+"\r\n"+authHeader+"Transfer-Encoding: chunked\r\n\r\n"+
		"3\r\nabc\r\n0\r\nX-Ok: 1\r\nContent-Length: 5\r\nHost: evil.example\r\nAuthorization: Basic eA==\r\nTransfer-Encoding: chunked\r\n\r\n", http.MethodPost)
	if err != nil || body != "ok" {
		t.Fatalf("%v %q", err, body)
	}
	want := http.Header{"X-Ok": {"1"}}
	if got := reqTrailer.Load().(http.Header); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("origin got trailer %v, want %v", got, want)
	}
	if fmt.Sprint(resp.Trailer) != fmt.Sprint(want) {
		t.Errorf("client got trailer %v, want %v", resp.Trailer, want)
	}
}

// A forwarded body that moves no byte for the idle timeout ends both
// connections and is counted as idle-timeout: a client that never reads
// the response, an origin that stalls mid-body, a client that sends less
// than its Content-Length.
func TestBodyIdleTimeout(t *testing.T) {
	for _, tc := range []string{"client never reads", "origin stalls", "client short body"} {
		t.Run(tc, func(t *testing.T) {
			originDone := make(chan struct{})
			o, _ := rawOrigin(t, func(c *net.TCPConn) {
				defer close(originDone)
				br := bufio.NewReader(c)
				_, length, err := readHeadRaw(br)
				if err != nil {
					return
				}
				switch tc {
				case "client never reads":
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
					buf := make([]byte, 64<<10)
					for {
						if _, err := c.Write(buf); err != nil {
							return
						}
					}
				case "origin stalls":
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
				}
				// Wait for rotor to close its side.
				io.CopyN(io.Discard, br, int64(length))
				io.Copy(io.Discard, br)
			})
			hits := &serve.Hits{}
			proxy, _ := testProxy(t, func(o *Options) { o.TunnelIdleTimeout = 300 * time.Millisecond; o.Hits = hits })
			c, err := net.Dial("tcp", proxy)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			raw := "GET http://" + o + "/ HTTP/1.1\r\nHost: " + o + "\r\n" + authHeader + "\r\n"
			if tc == "client short body" {
				raw = "POST http://" + o + "/ HTTP/1.1\r\nHost: " + o + "\r\n" + authHeader + "Content-Length: 100\r\n\r\nonly this"
			}
			io.WriteString(c, raw)
			if tc == "origin stalls" {
				_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
				b, _ := io.ReadAll(c) // ends when rotor closes
				if !strings.HasSuffix(string(b), "half") {
					t.Fatalf("client got %q", b)
				}
			}
			select {
			case <-originDone:
			case <-time.After(20 * time.Second):
				t.Fatal("rotor did not close the origin connection")
			}
			waitFor(t, func() bool { return hits.Load(serve.IdleTimeout) == 1 }, "idle-timeout counted once")
		})
	}
}

// waitFor polls cond for up to 10 seconds.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

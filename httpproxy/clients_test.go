package httpproxy

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/net/websocket"

	"github.com/rotor-proxy/rotor/auth"
	"github.com/rotor-proxy/rotor/dest"
	"github.com/rotor-proxy/rotor/internal/testkit"
	"github.com/rotor-proxy/rotor/pool"
)

// An HTTP/1.0 client asking for keep-alive gets Connection: keep-alive
// and a Content-Length when the length is known, and Connection: close
// with a body that ends at the close when it is not; never chunked.
func TestHTTP10KeepAlive(t *testing.T) {
	o := origin(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			io.WriteString(w, "a")
			w.(http.Flusher).Flush()
			io.WriteString(w, "b")
			return
		}
		io.WriteString(w, "ok")
	})
	proxy, _ := testProxy(t, nil)
	rc := dialProxy(t, proxy)
	for i := range 3 {
		resp, b, err := rc.do("GET http://"+o+"/ HTTP/1.0\r\n"+authHeader+"Connection: keep-alive\r\n\r\n", http.MethodGet)
		if err != nil || b != "ok" {
			t.Fatalf("request %d: %v %q", i, err, b)
		}
		if resp.Header.Get("Connection") != "keep-alive" || resp.ContentLength != 2 || len(resp.TransferEncoding) > 0 {
			t.Fatalf("request %d: Connection %q, length %d, TE %v", i, resp.Header.Get("Connection"), resp.ContentLength, resp.TransferEncoding)
		}
	}
	io.WriteString(rc.c, "GET http://"+o+"/stream HTTP/1.0\r\n"+authHeader+"Connection: keep-alive\r\n\r\n")
	raw, err := io.ReadAll(rc.c) // ends only if rotor closes
	if err != nil {
		t.Fatal(err)
	}
	head, body, _ := strings.Cut(string(raw), "\r\n\r\n")
	if !strings.Contains(head, "\r\nConnection: close") || strings.Contains(strings.ToLower(head), "chunked") || body != "ab" {
		t.Fatalf("unknown length to HTTP/1.0: %q", raw)
	}
}

// ab -k (HTTP/1.0 keep-alive) completes through rotor.
func TestApacheBenchKeepAlive(t *testing.T) {
	ab, err := exec.LookPath("ab")
	if err != nil {
		requireInCI(t, "ab (apache2-utils) not installed")
	}
	o := origin(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	proxy, _ := testProxy(t, nil)
	out, err := exec.Command(ab, "-k", "-n", "100", "-c", "4", "-s", "10", "-X", proxy, "-P", user+":"+pass, "http://"+o+"/").CombinedOutput()
	if err != nil {
		t.Fatalf("ab: %v\n%s", err, out)
	}
	for _, want := range []string{"Complete requests:      100", "Failed requests:        0", "Keep-Alive requests:    100"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("ab output lacks %q:\n%s", want, out)
		}
	}
}

// requireInCI skips outside CI, where a tool may be missing, and fails in
// CI, whose .ci/run installs it.
func requireInCI(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// With Expect: 100-continue, a refusal (407 for missing or wrong
// credentials, 403 for a forbidden target) comes at once, before any body
// byte is read, and the connection closes.
func TestExpectContinueRefusedAtOnce(t *testing.T) {
	o := origin(t, func(http.ResponseWriter, *http.Request) { t.Error("origin reached") })
	proxy, _ := testProxy(t, func(opt *Options) {
		p, _ := testkit.Pool([]netip.Addr{netip.MustParseAddr("127.0.0.2")}, pool.RoundRobin)
		opt.Dialer = pool.NewDialer(p, pool.DialerOptions{Timeout: 5 * time.Second, Policy: dest.NewPolicy(nil, nil)})
	})
	for name, creds := range map[string]string{"no credentials": "", "wrong password": basic(user, "wrong"), "forbidden target": authHeader} {
		t.Run(name, func(t *testing.T) {
			rc := dialProxy(t, proxy)
			_ = rc.c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(rc.c, "POST http://"+o+"/ HTTP/1.1\r\nHost: "+o+"\r\n"+creds+"Expect: 100-continue\r\nContent-Length: 1000000\r\n\r\n")
			resp, err := http.ReadResponse(rc.br, nil)
			if err != nil {
				t.Fatal(err)
			}
			want := http.StatusProxyAuthRequired
			if creds == authHeader {
				want = http.StatusForbidden
			}
			if resp.StatusCode != want || !resp.Close {
				t.Fatalf("status %d close %v, want %d and close", resp.StatusCode, resp.Close, want)
			}
			io.Copy(io.Discard, resp.Body)
			if _, err := rc.br.ReadByte(); err != io.EOF {
				t.Fatalf("connection not closed: %v", err)
			}
		})
	}
}

// Connection: close or Proxy-Connection: close from an HTTP/1.1 client
// closes the connection after the response.
func TestClientAsksClose(t *testing.T) {
	o := origin(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	proxy, _ := testProxy(t, nil)
	for _, h := range []string{"Connection: close\r\n", "Proxy-Connection: close\r\n"} {
		rc := dialProxy(t, proxy)
		if _, b, err := rc.do("GET http://"+o+"/ HTTP/1.1\r\nHost: "+o+"\r\n"+authHeader+h+"\r\n", http.MethodGet); err != nil || b != "ok" {
			t.Fatalf("%s: %v %q", h, err, b)
		}
		if _, err := rc.br.ReadByte(); err != io.EOF {
			t.Fatalf("%s: connection not closed: %v", h, err)
		}
	}
}

// The origin sees the client's request field lines in its order and
// spelling, less the hop-by-hop ones; the client sees the origin's
// response lines the same way.
func TestHeaderOrderAndSpellingKept(t *testing.T) {
	got := make(chan []string, 1)
	respLines := []string{"x-lower: 1", "Set-Cookie: a=1", "X-MiXeD-CaSe: 2", "Set-Cookie: b=2", "server: test", "Content-Length: 2"}
	o, _ := rawOrigin(t, func(c *net.TCPConn) {
		lines, _, err := readHeadRaw(bufio.NewReader(c))
		if err != nil {
			return
		}
		got <- lines
		io.WriteString(c, "HTTP/1.1 200 OK\r\n"+strings.Join(respLines, "\r\n")+"\r\n\r\nok")
	})
	proxy, _ := testProxy(t, nil)
	rc := dialProxy(t, proxy)
	reqLines := []string{"user-agent: Mozilla/5.0", "Host: " + o, "accept: */*", "Proxy-Connection: keep-alive",
		"sec-ch-ua: \"x\"", "Accept-Language: en", "X-Custom-Hop: drop me", "Connection: X-Custom-Hop", "cookie: a=1",
		strings.TrimSuffix(authHeader, "\r\n"), "ACCEPT-encoding: gzip"}
	io.WriteString(rc.c, "GET http://"+o+"/p?q=1 HTTP/1.1\r\n"+strings.Join(reqLines, "\r\n")+"\r\n\r\n")
	want := []string{"GET /p?q=1 HTTP/1.1", "user-agent: Mozilla/5.0", "Host: " + o, "accept: */*",
		"sec-ch-ua: \"x\"", "Accept-Language: en", "cookie: a=1", "ACCEPT-encoding: gzip"}
	if lines := <-got; strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("origin got\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	var head []string
	for {
		l, err := rc.br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if l = strings.TrimRight(l, "\r\n"); l == "" {
			break
		}
		head = append(head, l)
	}
	if want := append([]string{"HTTP/1.1 200 OK"}, respLines...); strings.Join(head, "\n") != strings.Join(want, "\n") {
		t.Errorf("client got\n%s\nwant\n%s", strings.Join(head, "\n"), strings.Join(want, "\n"))
	}
}

// CONNECT to an unbracketed IPv6 literal (wget 1.21, Python 3.11 urllib,
// httpx 0.23) and absolute-form http://::1:PORT/ are split at the last
// colon.
func TestUnbracketedIPv6(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback here:", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "v6 "+r.Host) })}
	go srv.Serve(ln)
	defer srv.Close()
	port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
	proxy, _ := testProxy(t, func(opt *Options) {
		p, _ := testkit.Pool([]netip.Addr{netip.MustParseAddr("::1")}, pool.RoundRobin)
		opt.Dialer = pool.NewDialer(p, pool.DialerOptions{Timeout: 5 * time.Second})
	})
	rc := dialProxy(t, proxy)
	resp, b, err := rc.do("GET http://::1:"+port+"/ HTTP/1.1\r\nHost: x\r\n"+authHeader+"\r\n", http.MethodGet)
	if err != nil || resp.StatusCode != 200 || b != "v6 [::1]:"+port {
		t.Fatalf("absolute-form: %v %v %q", resp, err, b)
	}
	rc = dialProxy(t, proxy)
	io.WriteString(rc.c, "CONNECT ::1:"+port+" HTTP/1.1\r\n"+authHeader+"\r\n")
	resp, err = http.ReadResponse(rc.br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	if resp, b, err := rc.do("GET / HTTP/1.1\r\nHost: v6\r\n\r\n", http.MethodGet); err != nil || b != "v6 v6" {
		t.Fatalf("through the tunnel: %v %v %q", resp, err, b)
	}
}

// Basic credentials that are not UTF-8 are taken as ISO-8859-1, as
// python-requests encodes a non-ASCII password.
func TestLatin1Credentials(t *testing.T) {
	o := origin(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	proxy, _ := testProxy(t, func(opt *Options) {
		p, _ := testkit.Pool([]netip.Addr{netip.MustParseAddr("127.0.0.2")}, pool.RoundRobin)
		us, err := auth.Build([]auth.UserSpec{auth.PlainUser("jürgen", "pässwörd")}, p, nil)
		if err != nil {
			t.Fatal(err)
		}
		opt.Access = testkit.Access(us)
	})
	latin1 := []byte{'j', 0xfc, 'r', 'g', 'e', 'n', ':', 'p', 0xe4, 's', 's', 'w', 0xf6, 'r', 'd'}
	for name, creds := range map[string][]byte{"ISO-8859-1": latin1, "UTF-8": []byte("jürgen:pässwörd")} {
		rc := dialProxy(t, proxy)
		resp, _, err := rc.do("GET http://"+o+"/ HTTP/1.1\r\nHost: "+o+"\r\nProxy-Authorization: Basic "+
			base64.StdEncoding.EncodeToString(creds)+"\r\n\r\n", http.MethodGet)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", name, resp, err)
		}
	}
}

// A TLS ClientHello or a SOCKS5 greeting on the HTTP listener is answered
// at once, and the log says what it means.
func TestWrongProtocolOnHTTPListener(t *testing.T) {
	logs := &logBuf{}
	proxy, _ := testProxy(t, func(o *Options) { o.Log = zerolog.New(logs) })
	c := dialProxy(t, proxy)
	c.c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03})
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil || resp.StatusCode != 400 {
		t.Fatalf("TLS: %v %v", resp, err)
	}
	c = dialProxy(t, proxy)
	c.c.Write([]byte{0x05, 0x01, 0x00})
	reply := make([]byte, 2)
	if _, err := io.ReadFull(c.br, reply); err != nil || reply[0] != 5 || reply[1] != 0xff {
		t.Fatalf("SOCKS5: %x %v", reply, err)
	}
	waitFor(t, func() bool {
		l := logs.String()
		return strings.Contains(l, "TLS sent to a plain HTTP proxy: use an http:// proxy URL") &&
			strings.Contains(l, "SOCKS5 greeting on the HTTP listener")
	}, "both log lines")
}

// The log's src for a block entry is the address bound, not the block.
func TestLogNamesBoundAddress(t *testing.T) {
	o := origin(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.RemoteAddr) })
	logs := &logBuf{}
	proxy, _ := testProxy(t, func(opt *Options) {
		p, err := pool.NewEntries([]netip.Prefix{netip.MustParsePrefix("127.1.0.0/16")}, nil, pool.RoundRobin)
		if err != nil {
			t.Fatal(err)
		}
		opt.Dialer = pool.NewDialer(p, pool.DialerOptions{Timeout: 5 * time.Second})
		opt.Log = zerolog.New(logs)
	})
	rc := dialProxy(t, proxy)
	_, b, err := rc.do("GET http://"+o+"/ HTTP/1.1\r\nHost: "+o+"\r\n"+authHeader+"\r\n", http.MethodGet)
	if err != nil {
		t.Fatal(err)
	}
	bound, _, _ := net.SplitHostPort(b)
	if bound == "127.1.0.0" {
		t.Skip("drew the block's first address; the check says nothing")
	}
	waitFor(t, func() bool { return strings.Contains(logs.String(), `"src":"`+bound+`"`) }, "log line with src "+bound)
}

// A malformed Proxy-Authorization line (space before the colon, obs-fold,
// a control byte, no colon) is refused without its Base64 or the decoded
// password in any log line or error body.
func TestRefusedHeadKeepsSecrets(t *testing.T) {
	const name, pw = "secret-user", "s3cr3t-Pa55-word"
	b64 := base64.StdEncoding.EncodeToString([]byte(name + ":" + pw))
	logs := &logBuf{}
	o := origin(t, func(http.ResponseWriter, *http.Request) {})
	proxy, _ := testProxy(t, func(opt *Options) { opt.Log = zerolog.New(logs) })
	var bodies strings.Builder
	for _, line := range []string{
		"Proxy-Authorization : Basic " + b64,
		"Proxy-Authorization: Basic\r\n " + b64,
		"Proxy-Authorization: Basic " + b64 + "\x01",
		"Basic " + b64,
		b64 + ": x",
		"Proxy-Authorization: Basic " + b64 + "\r\nX: \x7f",
	} {
		rc := dialProxy(t, proxy)
		resp, body, err := rc.do("GET http://"+o+"/ HTTP/1.1\r\nHost: "+o+"\r\n"+line+"\r\n\r\n", http.MethodGet)
		if err != nil || resp.StatusCode != 400 {
			t.Fatalf("%q: %v %v", line, resp, err)
		}
		bodies.WriteString(body)
	}
	waitFor(t, func() bool { return strings.Count(logs.String(), "\n") >= 6 }, "six log lines")
	for what, text := range map[string]string{"log": logs.String(), "error body": bodies.String()} {
		for _, secret := range []string{b64, pw, b64[:12]} {
			if strings.Contains(text, secret) {
				t.Errorf("%s holds a secret (%q):\n%s", what, secret, text)
			}
		}
	}
}

// A WebSocket client library going through rotor as Node applications do
// (ws with http-proxy-agent: GET http://host/path with Upgrade) gets the
// 101 and a working tunnel.
func TestWebSocketOverAbsoluteForm(t *testing.T) {
	node, err := exec.LookPath("node")
	dir, _ := filepath.Abs("../testdata/wsclient")
	if err != nil {
		requireInCI(t, "node not installed")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ws")); err != nil {
		requireInCI(t, "run npm install in testdata/wsclient")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// An echo server that, like most, accepts a client without Origin.
	srv := &http.Server{Handler: websocket.Server{Handler: func(ws *websocket.Conn) { io.Copy(ws, ws) },
		Handshake: func(*websocket.Config, *http.Request) error { return nil }}}
	go srv.Serve(ln)
	defer srv.Close()
	logs := &logBuf{}
	proxy, _ := testProxy(t, func(o *Options) { o.Log = zerolog.New(logs) })
	cmd := exec.Command(node, "client.js", "ws://"+ln.Addr().String()+"/echo", "http://"+user+":"+pass+"@"+proxy, "hello", "second message")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node client: %v\n%s", err, out)
	}
	if got := string(out); got != "hello\nsecond message\nclosed\n" {
		t.Fatalf("client printed %q", got)
	}
	// It went through the absolute-form path, as a tunnel after a 101.
	waitFor(t, func() bool {
		l := logs.String()
		return strings.Contains(l, `"method":"GET"`) && strings.Contains(l, `"status":101`)
	}, "the upgrade's log line")
}

package httpproxy

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/internal/target"
)

// rawOrigin serves each connection with handle on 127.0.0.1.
func rawOrigin(t *testing.T, handle func(*net.TCPConn)) (addr string, conns *atomic.Int64) {
	t.Helper()
	s, err := target.TCP("127.0.0.1:0", handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s.Addr, &s.Conns
}

var authHeader = "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)) + "\r\n"

// An origin that resets halfway through a body: the client sees a cut
// (short body, then a closed connection), never a clean end, and the next
// request does not reuse the broken upstream connection.
func TestOriginResetMidBody(t *testing.T) {
	o, conns := rawOrigin(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/cut" {
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
				_, _ = c.Write(make([]byte, 30000))
				_ = c.SetLinger(0)
				return // RST
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	proxy := startProxy(t, 5*time.Second)
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET http://%s/cut HTTP/1.1\r\nHost: %s\r\n%s\r\n", o, o, authHeader)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil || n >= 100000 {
		t.Fatalf("read %d bytes, err %v: want a short body and an error", n, err)
	}
	// The client connection was closed, not reused.
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("client connection still open after a cut response")
	}
	// Rotation is 127.0.0.2, .3: two requests from the same source would
	// reuse an upstream connection; the broken one must not be among them.
	before := conns.Load()
	for i := 0; i < 2; i++ {
		if got := rawStatus(t, proxy, "GET http://"+o+"/ok HTTP/1.1\r\nHost: "+o+"\r\n"+authHeader+"\r\n"); got != 200 {
			t.Fatalf("request after a cut: status %d", got)
		}
	}
	if conns.Load() == before {
		t.Fatal("requests after the reset reused the broken upstream connection")
	}
}

// A client that aborts a large upload: the upstream side is closed at
// once, not left waiting for the rest of the body.
func TestClientAbortsUpload(t *testing.T) {
	gotEOF := make(chan int64, 1)
	o, _ := rawOrigin(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		n, _ := io.Copy(io.Discard, br) // until rotor closes the connection
		gotEOF <- n
	})
	proxy := startProxy(t, 5*time.Second)
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "POST http://%s/up HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n", o, o, authHeader, 100<<20)
	chunk := make([]byte, 1<<20)
	for i := 0; i < 10; i++ {
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.(*net.TCPConn).SetLinger(0)
	c.Close() // abort at 10 MB of 100
	select {
	case n := <-gotEOF:
		if n > 11<<20 {
			t.Fatalf("origin received %d bytes, more than the client sent", n)
		}
	case <-time.After(time.Second):
		t.Fatal("upstream connection still open 1s after the client aborted")
	}
}

// 1,000 requests on one client connection, all correct.
func TestThousandKeepAliveRequests(t *testing.T) {
	o := origin(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.URL.Query().Get("n"))
	})
	proxy := startProxy(t, 5*time.Second)
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	br := bufio.NewReader(c)
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(c, "GET http://%s/?n=%d HTTP/1.1\r\nHost: %s\r\n%s\r\n", o, i, o, authHeader)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(body) != strconv.Itoa(i) {
			t.Fatalf("request %d: body %q, %v", i, body, err)
		}
	}
}

package httpproxy

import (
	"bufio"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Each malformed request gets its status, nothing complete reaches the
// origin, and a well-formed client on another connection is served
// meanwhile.
func TestBadRequests(t *testing.T) {
	var hits atomic.Int64
	o := origin(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		hits.Add(1)
	})
	proxy := startProxy(t, 5*time.Second)
	auth := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)) + "\r\n"
	get := "GET http://" + o + "/ HTTP/1.1\r\nHost: " + o + "\r\n" + auth
	post := "POST http://" + o + "/ HTTP/1.1\r\nHost: " + o + "\r\n" + auth
	for _, tc := range []struct {
		name string
		raw  string
		want int
	}{
		{"garbage request line", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400},
		{"no version", "GET http://" + o + "/\r\n\r\n", 400},
		{"HTTP/2.0", "GET http://" + o + "/ HTTP/2.0\r\nHost: " + o + "\r\n\r\n", 505},
		{"HTTP/0.9 style", "GET /\r\n\r\n", 400},
		{"65 KiB of headers", get + "X-Big: " + strings.Repeat("a", 65<<10) + "\r\n\r\n", 431},
		{"CL and TE", post + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"two Content-Lengths", post + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400},
		{"Content-Length list", post + "Content-Length: 5, 6\r\n\r\nhello!", 400},
		{"non-numeric Content-Length", post + "Content-Length: 5a\r\n\r\nhello", 400},
		{"negative Content-Length", post + "Content-Length: -1\r\n\r\n", 400},
		{"plus Content-Length", post + "Content-Length: +5\r\n\r\nhello", 400},
		{"TE gzip", post + "Transfer-Encoding: gzip\r\n\r\n", 501},
		{"TE chunked then gzip", post + "Transfer-Encoding: chunked, gzip\r\n\r\n", 501},
		{"TE twice", post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501},
		{"TE in HTTP/1.0", "POST http://" + o + "/ HTTP/1.0\r\n" + auth + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"space before colon", get + "Transfer-Encoding : chunked\r\n\r\n", 400},
		{"empty header name", get + ": value\r\n\r\n", 400},
		{"NUL in header name", get + "X\x00Y: 1\r\n\r\n", 400},
		{"obs-fold", get + "X-A: 1\r\n folded\r\n\r\n", 400},
		{"obs-fold with tab", get + "X-A: 1\r\n\tfolded\r\n\r\n", 400},
		{"leading space on first field", "GET http://" + o + "/ HTTP/1.1\r\n Host: " + o + "\r\n\r\n", 400},
		{"control byte in value", get + "X-A: a\x01b\r\n\r\n", 400},
		{"257 header fields", get + strings.Repeat("X-F: 1\r\n", 257) + "\r\n", 431},
		{"missing Host", "GET http://" + o + "/ HTTP/1.1\r\n" + auth + "\r\n", 400},
		{"two Hosts", get + "Host: other.example\r\n\r\n", 400},
		{"bad Host", "GET http://" + o + "/ HTTP/1.1\r\nHost: a b\r\n" + auth + "\r\n", 400},
		{"CONNECT without port", "CONNECT 127.0.0.1 HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + "\r\n", 400},
		{"CONNECT port 0", "CONNECT 127.0.0.1:0 HTTP/1.1\r\n" + auth + "\r\n", 400},
		{"CONNECT port 65536", "CONNECT 127.0.0.1:65536 HTTP/1.1\r\n" + auth + "\r\n", 400},
		{"CONNECT port abc", "CONNECT 127.0.0.1:abc HTTP/1.1\r\n" + auth + "\r\n", 400},
		{"CONNECT with path", "CONNECT http://127.0.0.1:80/ HTTP/1.1\r\n" + auth + "\r\n", 400},
		{"method with space", "GE T http://" + o + "/ HTTP/1.1\r\nHost: " + o + "\r\n\r\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rawStatus(t, proxy, tc.raw); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
			// A good client is still served.
			if got := rawStatus(t, proxy, get+"\r\n"); got != 200 {
				t.Fatalf("good request after bad input: status %d", got)
			}
		})
	}
	if n := hits.Load(); n != int64(32) {
		t.Fatalf("origin handled %d requests, want only the 32 good ones", n)
	}
}

// Malformed chunked bodies: the request never completes at the origin.
func TestBadChunkedBodies(t *testing.T) {
	var hits, opened, closed atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err == nil {
			hits.Add(1)
		}
	}), ConnState: func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			closed.Add(1)
		}
	}}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	o := ln.Addr().String()
	proxy := startProxy(t, 5*time.Second)
	auth := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)) + "\r\n"
	post := "POST http://" + o + "/ HTTP/1.1\r\nHost: " + o + "\r\n" + auth + "Transfer-Encoding: chunked\r\n\r\n"
	for name, body := range map[string]string{
		"bare LF in size line": "5\nhello\r\n0\r\n\r\n",
		"oversized size":       "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
		"non-hex size":         "zz\r\nhello\r\n0\r\n\r\n",
		"short chunk":          "5\r\nhel\r\n0\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			c, err := net.Dial("tcp", proxy)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.WriteString(c, post+body)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					t.Fatalf("malformed chunked body answered 200")
				}
			}
		})
	}
	// Once rotor has cut every upstream connection mid-body and the
	// origin has seen each close, no request can complete any more.
	waitFor(t, func() bool { return closed.Load() == opened.Load() }, "every upstream connection closed")
	if n := hits.Load(); n != 0 {
		t.Fatalf("origin completed %d malformed requests", n)
	}
}

func TestBadProxyAuthorization(t *testing.T) {
	o := origin(t, func(http.ResponseWriter, *http.Request) {})
	proxy := startProxy(t, 5*time.Second)
	get := "GET http://" + o + "/ HTTP/1.1\r\nHost: " + o + "\r\n"
	for name, h := range map[string]string{
		"absent":        "",
		"not base64":    "Proxy-Authorization: Basic !!!\r\n",
		"no colon":      "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(user+pass)) + "\r\n",
		"bearer":        "Proxy-Authorization: Bearer " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)) + "\r\n",
		"16 KiB":        "Proxy-Authorization: Basic " + strings.Repeat("QUFB", 4<<10) + "\r\n",
		"empty":         "Proxy-Authorization: \r\n",
		"basic no data": "Proxy-Authorization: Basic\r\n",
	} {
		if got := rawStatus(t, proxy, get+h+"\r\n"); got != http.StatusProxyAuthRequired {
			t.Errorf("%s: status %d, want 407", name, got)
		}
	}
}

// Bytes pipelined behind a CONNECT that fails auth reach no target.
func TestPipelinedAfterFailedConnect(t *testing.T) {
	var hits atomic.Int64
	o := origin(t, func(http.ResponseWriter, *http.Request) { hits.Add(1) })
	proxy := startProxy(t, 5*time.Second)
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "CONNECT "+o+" HTTP/1.1\r\nHost: "+o+"\r\n\r\n"+
		"GET http://"+o+"/ HTTP/1.1\r\nHost: "+o+"\r\nProxy-Authorization: Basic "+
		base64.StdEncoding.EncodeToString([]byte(user+":"+pass))+"\r\n\r\n")
	out, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(out), "HTTP/1.1 407") || strings.Count(string(out), "HTTP/1.1") != 1 {
		t.Fatalf("got %q, want one 407 and a closed connection", out)
	}
	if hits.Load() != 0 {
		t.Fatal("pipelined request behind a refused CONNECT reached the origin")
	}
}

// rawStatus sends raw and returns the status of the response, 0 if none.
func rawStatus(t *testing.T, proxy, raw string) int {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

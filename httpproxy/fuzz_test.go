package httpproxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"testing"
)

// FuzzReadRequest feeds arbitrary bytes to the request-head parser. It
// must not panic, and whatever it accepts must be unambiguous: one framing,
// the absolute URI's host as the Host, CONNECT's target as given.
//
//	go test -run '^$' -fuzz FuzzReadRequest -fuzztime 20s ./httpproxy/
func FuzzReadRequest(f *testing.F) {
	for _, s := range []string{
		"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
		"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
		"POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: y\r\n\r\n",
		"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic dTpw\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET http://a/ HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := readRequest(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			return
		}
		if req.ProtoMajor != 1 {
			t.Fatalf("accepted HTTP/%d", req.ProtoMajor)
		}
		if req.ContentLength != 0 && req.ContentLength != -1 && len(req.TransferEncoding) > 0 {
			t.Fatal("accepted both Content-Length and Transfer-Encoding")
		}
		if req.URL.Host != "" && req.Host != req.URL.Host {
			t.Fatalf("Host %q differs from the absolute URI's %q", req.Host, req.URL.Host)
		}
		if req.Method == http.MethodConnect && req.URL.Host != req.RequestURI {
			t.Fatalf("CONNECT target %q parsed as %q", req.RequestURI, req.URL.Host)
		}
		if _, ok := req.Header["Transfer-Encoding"]; ok {
			t.Fatal("Transfer-Encoding left in the header map")
		}
		// Reading the body must end, with or without an error.
		_, _ = io.Copy(io.Discard, io.LimitReader(req.Body, 1<<20))
	})
}

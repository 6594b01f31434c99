package httpproxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
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
		var buf headBuf
		lim := bodyLimits{trailer: headLimits{4 << 10, maxHeaderFields}}
		req, err := readRequest(bufio.NewReader(bytes.NewReader(data)), 64<<10, &buf, lim)
		if err != nil {
			return
		}
		if req.fields.count("Content-Length") > 0 && req.fields.count("Transfer-Encoding") > 0 {
			t.Fatal("accepted both Content-Length and Transfer-Encoding")
		}
		if req.fields.count("Host") > 1 {
			t.Fatal("accepted two Host fields")
		}
		if req.method == http.MethodConnect && (req.host == "" || req.port == "") {
			t.Fatalf("CONNECT target %q parsed as %q %q", req.target, req.host, req.port)
		}
		if req.scheme != "" && (req.host == "" || req.port == "" || req.path == "" || req.path[0] != '/') {
			t.Fatalf("absolute target %q parsed as host %q port %q path %q", req.target, req.host, req.port, req.path)
		}
		for _, f := range req.fields {
			if strings.ContainsAny(f.name, " \t\r\n:") || strings.ContainsAny(f.value, "\r\n\x00") {
				t.Fatalf("accepted field %q: %q", f.name, f.value)
			}
		}
		// The head rotor sends upstream parses back as one request with
		// the same framing.
		if req.scheme != "" {
			var out bytes.Buffer
			w := bufio.NewWriter(&out)
			writeRequestHead(w, req, nil)
			w.Flush()
			again, err := readRequest(bufio.NewReader(&out), 1<<20, &headBuf{}, lim)
			if err != nil {
				t.Fatalf("forwarded head %q does not parse: %v", out.String(), err)
			}
			if again.length != req.length {
				t.Fatalf("framing changed: length %d, then %d", req.length, again.length)
			}
		}
		// Reading the body must end, with or without an error.
		if req.body != nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(req.body, 1<<20))
		}
	})
}

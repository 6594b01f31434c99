package httpproxy

import (
	"io"
	"net/http"
	"net/http/httputil"
	"time"

	"github.com/rotor-proxy/rotor/pool"
)

// forwardRequest sends an absolute-form request to its origin from the
// next source address, through that address's own ReverseProxy.
func (s *Server) forwardRequest(w http.ResponseWriter, r *http.Request, user string, start time.Time) {
	if !r.URL.IsAbs() || r.URL.Host == "" {
		reply(w, http.StatusBadRequest, "origin-form request "+quote(r.RequestURI)+
			"; this is a proxy: send absolute-form (GET http://host/path) or CONNECT")
		s.logRequest(r, user, nil, http.StatusBadRequest, 0, 0, start, nil)
		return
	}
	if r.URL.Scheme != "http" && r.URL.Scheme != "https" {
		reply(w, http.StatusBadRequest, "unsupported scheme "+quote(r.URL.Scheme))
		s.logRequest(r, user, nil, http.StatusBadRequest, 0, 0, start, nil)
		return
	}
	src, err := s.opts.Dialer.Pool().Pick(pool.FamilyOf(r.URL.Hostname()))
	if err != nil {
		reply(w, http.StatusBadGateway, dialMessage(r.URL.Host, pool.ClassNoSource))
		s.logRequest(r, user, nil, http.StatusBadGateway, 0, 0, start, err)
		return
	}
	lw := &logWriter{ResponseWriter: w}
	var body *countingBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &countingBody{ReadCloser: r.Body}
		r.Body = body
	}
	s.forward[src.Index].ServeHTTP(lw, r)
	var up int64
	if body != nil {
		up = body.n
	}
	s.logRequest(r, user, src, lw.status(), up, lw.n, start, lw.err)
}

// forwardingHeaders are the client's own forwarding headers, which
// ReverseProxy strips when Rewrite is set; a forward proxy passes them on
// untouched and adds none of its own.
var forwardingHeaders = [...]string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// rewrite keeps the absolute URL and Host the client asked for.
// ReverseProxy has already removed hop-by-hop headers (Connection and the
// names it lists, Proxy-Connection, Proxy-Authorization, Keep-Alive, TE
// except "trailers", Trailer, Transfer-Encoding, Upgrade).
func rewrite(pr *httputil.ProxyRequest) {
	for _, h := range forwardingHeaders {
		if v, ok := pr.In.Header[h]; ok {
			pr.Out.Header[h] = v
		}
	}
	// ReverseProxy puts back Connection/Upgrade for protocol switches; a
	// forward proxy does not switch protocols (clients use CONNECT).
	pr.Out.Header.Del("Upgrade")
	pr.Out.Header.Del("Connection")
}

// forwardError answers a failed round trip: 502, or 504 for a timeout,
// with a one-line body.
func (s *Server) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	if lw, ok := w.(*logWriter); ok {
		lw.err = err
	}
	cl := pool.Classify(err)
	reply(w, statusFor(cl), dialMessage(r.URL.Host, cl))
}

// logWriter records the status and body size for the request's log line.
type logWriter struct {
	http.ResponseWriter
	code int
	n    int64
	err  error
}

func (lw *logWriter) WriteHeader(code int) {
	if lw.code == 0 && code >= 200 {
		lw.code = code
	}
	lw.ResponseWriter.WriteHeader(code)
}

func (lw *logWriter) Write(p []byte) (int, error) {
	if lw.code == 0 {
		lw.code = http.StatusOK
	}
	n, err := lw.ResponseWriter.Write(p)
	lw.n += int64(n)
	return n, err
}

func (lw *logWriter) status() int {
	if lw.code == 0 {
		return http.StatusOK
	}
	return lw.code
}

// Unwrap lets http.ResponseController reach Flush on the real writer:
// streamed responses are flushed as they arrive.
func (lw *logWriter) Unwrap() http.ResponseWriter { return lw.ResponseWriter }

// Flush is here for callers that type-assert http.Flusher.
func (lw *logWriter) Flush() {
	if f, ok := lw.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// countingBody counts request body bytes sent upstream.
type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}

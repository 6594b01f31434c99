package httpproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/rotor-proxy/rotor/auth"
	"github.com/rotor-proxy/rotor/internal/sockread"
	"github.com/rotor-proxy/rotor/serve"
)

// clientConn is one client connection and its buffers.
type clientConn struct {
	s      *Server
	c      net.Conn          // the client: the accepted connection, or TLS over it
	id     net.Conn          // the accepted connection, under which Conns tracks it
	first  sockread.Prefixed // the mixed port's first read, then the connection
	cert   string            // the verified client certificate's common name; "" without
	client netip.Addr        // for --allow-clients, and the idle-pool key of anonymous clients
	br     *bufio.Reader
	bw     *bufio.Writer
	buf    headBuf // request heads are read into this
}

// Connection buffers are pooled: allocating 8 KiB per connection was most
// of what rotor allocated on the new-connection benchmark.
var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

func (s *Server) serveConn(c net.Conn) { s.serveFirst(c, nil, s.opts.TLS != nil) }

// HandleHTTP serves a plain HTTP proxy connection accepted elsewhere (the
// mixed port, serve.Mux), whose first bytes were read into first.
func (s *Server) HandleHTTP(c net.Conn, first []byte) { s.serveFirst(c, first, false) }

// HandleTLS serves an HTTP proxy connection inside TLS (Options.TLS)
// accepted elsewhere, whose first bytes were read into first.
func (s *Server) HandleTLS(c net.Conn, first []byte) { s.serveFirst(c, first, true) }

// serveFirst serves the client connection c, whose first bytes were read
// already (first, nil for none), inside TLS when useTLS.
func (s *Server) serveFirst(c net.Conn, first []byte, useTLS bool) {
	if err := s.Conns.Add(c); err != nil {
		if err == serve.ErrLimit && !useTLS {
			// Refused cleanly: everyone already connected carries on. (A
			// TLS client is closed: it would read plain text as garbage.)
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"+
				"Connection: close\r\nRetry-After: 1\r\nContent-Length: 43\r\n\r\nrotor: too many connections, try again later\n")
		}
		c.Close()
		return
	}
	cc := &clientConn{s: s, c: c, id: c}
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		cc.client = ta.AddrPort().Addr()
	}
	var r io.Reader = c
	switch {
	case useTLS:
		tc, ok := s.handshake(cc, first)
		if !ok {
			s.Conns.Remove(c)
			c.Close()
			return
		}
		cc.c, r = tc, tc
	case len(first) > 0:
		cc.first = sockread.Prefixed{Bytes: first, Src: c}
		r = &cc.first
	}
	cc.br = readers.Get().(*bufio.Reader)
	cc.br.Reset(r)
	cc.bw = writers.Get().(*bufio.Writer)
	cc.bw.Reset(cc.c)
	handedOff := cc.serve()
	cc.br.Reset(nil)
	readers.Put(cc.br)
	cc.bw.Reset(nil)
	writers.Put(cc.bw)
	if !handedOff {
		cc.c.Close()
		s.Conns.Remove(c)
	}
}

// serve reads and answers requests until the connection should close. It
// returns true when the connection was handed to a tunnel, which then owns
// it.
func (cc *clientConn) serve() (handedOff bool) {
	s := cc.s
	wait := s.opts.HeaderTimeout // for the first request: the client connected to send one
	for first := true; ; first = false {
		if err := cc.c.SetReadDeadline(time.Now().Add(wait)); err != nil {
			return false
		}
		b, err := cc.br.Peek(1)
		if err != nil {
			// Idle keep-alive timeout, client gone, or closed by shutdown.
			if wait == s.opts.IdleTimeout && errors.Is(err, os.ErrDeadlineExceeded) {
				s.opts.Hits.Add(serve.KeepAliveTimeout)
				serve.KeepAliveTimeout.Field(s.opts.Log.Debug().Str("proto", "http").Str("client", cc.c.RemoteAddr().String())).
					Msg("idle keep-alive connection closed")
			}
			return false
		}
		if first && cc.wrongProtocol(b[0]) {
			return false
		}
		if wait != s.opts.HeaderTimeout {
			if !s.Conns.Busy(cc.id) {
				return false
			}
			_ = cc.c.SetReadDeadline(time.Now().Add(s.opts.HeaderTimeout))
		}
		start := time.Now()
		req, err := readRequest(cc.br, s.opts.MaxHeaderBytes, &cc.buf, s.bodyLimits())
		if err != nil {
			cc.rejectHead(err, start)
			return false
		}
		req.remote = cc.c.RemoteAddr().String()
		if err := cc.c.SetReadDeadline(time.Time{}); err != nil {
			return false
		}
		keep, handedOff := cc.handle(req, start)
		if handedOff {
			return true
		}
		if !keep || !s.Conns.Idle(cc.id) {
			return false
		}
		wait = s.opts.IdleTimeout
	}
}

// rejectHead answers a request head that could not be read, if it makes
// sense to answer at all.
func (cc *clientConn) rejectHead(err error, start time.Time) {
	var br *badRequest
	status, hit := 0, serve.None
	switch {
	case errors.As(err, &br):
		status = br.status
	case errors.Is(err, errHeadTooLarge) || errors.Is(err, bufio.ErrBufferFull):
		status, hit = http.StatusRequestHeaderFieldsTooLarge, serve.MaxHeaderBytes
		br = &badRequest{status, "request head larger than " + strconv.Itoa(cc.s.opts.MaxHeaderBytes) + " bytes"}
	case errors.Is(err, os.ErrDeadlineExceeded):
		status, hit = http.StatusRequestTimeout, serve.HeaderTimeout
		br = &badRequest{status, "request head not received in time"}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		// The client went away mid-head: nobody to answer.
	default:
		status = http.StatusBadRequest
		br = &badRequest{status, "malformed request"}
	}
	if status != 0 {
		_ = cc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		cc.writeError(status, br.msg, true, nil)
	}
	e := cc.s.opts.Log.Warn().Str("proto", "http").Str("client", cc.c.RemoteAddr().String()).Int("status", status).
		Dur("dur_ms", time.Since(start)).Err(err)
	cc.s.opts.Hits.Add(hit)
	hit.Field(e).Msg("bad request head")
}

// handle answers one request. keep reports whether the connection may
// carry another request; handedOff that a tunnel now owns it.
func (cc *clientConn) handle(req *request, start time.Time) (keep, handedOff bool) {
	if req.method != http.MethodConnect && req.scheme == "" {
		// Before any 407: a browser opening the proxy's address as a web
		// page should learn what rotor is, not be asked for a password.
		return cc.refuse(req, identity{}, start, http.StatusBadRequest, "origin-form request "+quote(req.target)+
			": this is a proxy, not a web server: set it as the HTTP proxy of your client, which then sends absolute-form (GET http://host/path) or CONNECT",
			nil, nil), false
	}
	usr, who, sess, ok, serr := cc.s.authorize(req, cc.client, cc.cert)
	if be, backoff := errors.AsType[*auth.BackoffError](serr); backoff {
		// Not a 407: a browser would prompt again, and nothing was checked.
		return cc.refuse(req, identity{}, start, http.StatusTooManyRequests, "too many failed logins from this address: retry later",
			[]string{"Retry-After", strconv.Itoa(int(be.RetryAfter/time.Second) + 1)}, &limitError{hit: serve.AuthBackoff, err: serr}), false
	}
	if errors.Is(serr, errCertUser) {
		// A password would not help: the certificate says who this is.
		cc.s.opts.Listener.AuthFailed()
		return cc.refuse(req, identity{}, start, http.StatusForbidden, "client certificate "+quote(cc.cert)+" names no user of this proxy", nil, serr), false
	}
	if !ok {
		cc.s.opts.Listener.AuthFailed()
		return cc.refuse(req, identity{}, start, http.StatusProxyAuthRequired, "proxy authentication required",
			[]string{"Proxy-Authenticate", `Basic realm="rotor"`}, serr), false
	}
	done, why, admitted := usr.Admit()
	if !admitted {
		return cc.refuse(req, who, start, http.StatusTooManyRequests, "user "+quote(who.name)+" is over its "+why.String()+" limit",
			[]string{"Retry-After", "1"}, &limitError{hit: why}), false
	}
	if req.method == http.MethodConnect {
		return cc.connect(req, who, sess, start, done)
	}
	return cc.forward(req, who, sess, start, done)
}

// refuse answers a request rotor will not serve with status and msg (and
// header, name-value pairs), logs it with err, and reports whether the
// connection may carry another request. Whatever a refused CONNECT
// pipelined is tunnel payload, never a request, so it closes after
// answering; so does a request whose body cannot be drained.
func (cc *clientConn) refuse(req *request, who identity, start time.Time, status int, msg string, header []string, err error) (keep bool) {
	closeAfter := req.method == http.MethodConnect || !cc.drain(req)
	cc.writeError(status, msg, closeAfter, header)
	cc.s.logRequest(req, who, nil, netip.Addr{}, status, 0, 0, start, err)
	return !closeAfter
}

// limitError is a request refused by a limit, with what the limit said.
type limitError struct {
	hit serve.Hit
	err error
}

func (e *limitError) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return "over the " + e.hit.String() + " limit"
}

func (e *limitError) Unwrap() error { return e.err }

// drain reads what is left of a request body that will not be forwarded,
// up to 256 KiB within the header timeout, so the connection can carry the
// next request. It reports false when the connection must close instead:
// the client asked to, or it waits for a 100 Continue before sending a
// body, which must then not be read at all.
func (cc *clientConn) drain(req *request) bool {
	if req.close {
		return false
	}
	if req.bodyDone() {
		return true
	}
	if req.expect100 {
		return false
	}
	_ = cc.c.SetReadDeadline(time.Now().Add(cc.s.opts.HeaderTimeout))
	_, _ = io.CopyN(io.Discard, req.body, 256<<10)
	_ = cc.c.SetReadDeadline(time.Time{})
	return req.bodyDone()
}

// writeError writes a status with a one-line plain-text body and flushes.
// extra holds header name/value pairs.
func (cc *clientConn) writeError(status int, msg string, closeAfter bool, extra []string) {
	body := "rotor: " + msg + "\n"
	w := cc.bw
	w.WriteString("HTTP/1.1 ")
	w.WriteString(strconv.Itoa(status))
	w.WriteByte(' ')
	w.WriteString(http.StatusText(status))
	w.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: ")
	w.WriteString(strconv.Itoa(len(body)))
	for i := 0; i+1 < len(extra); i += 2 {
		w.WriteString("\r\n")
		w.WriteString(extra[i])
		w.WriteString(": ")
		w.WriteString(extra[i+1])
	}
	if closeAfter {
		w.WriteString("\r\nConnection: close")
	}
	w.WriteString("\r\n\r\n")
	w.WriteString(body)
	_ = w.Flush()
}

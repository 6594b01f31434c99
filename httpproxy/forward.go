package httpproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/rotor-proxy/rotor/pool"
)

// forward sends an absolute-form request to its origin from the next
// source address and copies the response back. It reports whether the
// client connection may carry another request.
func (cc *clientConn) forward(req *http.Request, user string, sess pool.Session, start time.Time) bool {
	s := cc.s
	if req.URL.Scheme == "" || req.URL.Host == "" {
		cc.writeError(http.StatusBadRequest, "origin-form request "+quote(req.RequestURI)+
			"; this is a proxy: send absolute-form (GET http://host/path) or CONNECT", !cc.drain(req), nil)
		s.logRequest(req, user, nil, http.StatusBadRequest, 0, 0, start, nil)
		return !req.Close && bodyDone(req.Body)
	}
	scheme := req.URL.Scheme
	if scheme != "http" && scheme != "https" {
		cc.writeError(http.StatusBadRequest, "unsupported scheme "+quote(scheme), true, nil)
		s.logRequest(req, user, nil, http.StatusBadRequest, 0, 0, start, nil)
		return false
	}
	host, port := req.URL.Hostname(), req.URL.Port()
	if port == "" {
		port = "80"
		if scheme == "https" {
			port = "443"
		}
	}
	hostport := net.JoinHostPort(host, port)
	// Reusing an upstream connection needs the source chosen before any
	// dial. A name in a pool with both families is resolved first to
	// choose the family (see pool.Dialer.DialName), so it dials afresh;
	// so does a block source, which binds a new random address each time.
	var src *pool.Source
	fam := pool.FamilyOf(host)
	if fam != pool.Any || !s.opts.Dialer.PoolFor(sess).Mixed() {
		var err error
		if src, err = s.opts.Dialer.Pick(s.baseCtx, fam, sess); err != nil {
			cl := pool.Classify(err)
			status := statusFor(cl)
			cc.writeError(status, dialMessage(hostport, cl), true, nil)
			s.logRequest(req, user, nil, status, 0, 0, start, err)
			return false
		}
	}
	reuse := src != nil && !src.Block

	out := outgoing(req)
	if httpguts.HeaderValuesContainsToken(req.Header["Expect"], "100-continue") {
		// Answer 100 ourselves and send the body along: the origin may not
		// speak HTTP/1.1 continue, and rotor reads the body anyway.
		delete(out.Header, "Expect")
		if !bodyDone(req.Body) {
			cc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			if err := cc.bw.Flush(); err != nil {
				return false
			}
		}
	}

	key := scheme + "://" + hostport
	var (
		resp *http.Response
		uc   *upConn
		err  error
	)
	for attempt := 0; ; attempt++ {
		reused := false
		if attempt == 0 && reuse {
			uc = s.upstreams.Get(src).take(key)
			reused = uc != nil
		}
		if uc == nil {
			var used *pool.Source
			uc, used, err = s.dialUpstream(src, sess, scheme, host, hostport, key)
			if err != nil && src != nil && pool.IsLocal(err) {
				// The source left the host: DialFrom took it out of
				// rotation; try once from another.
				if next, perr := s.opts.Dialer.Pick(s.baseCtx, fam, sess); perr == nil && next != src {
					src = next
					uc, used, err = s.dialUpstream(src, sess, scheme, host, hostport, key)
				}
			}
			if used != nil {
				src = used
			}
			if err != nil {
				cl := pool.Classify(err)
				status := statusFor(cl)
				keep := cc.drain(req)
				cc.writeError(status, dialMessage(hostport, cl), !keep, nil)
				s.logRequest(req, user, src, status, bodyRead(req.Body), 0, start, err)
				return keep
			}
		}
		resp, err = roundTrip(cc, uc, out, s.opts.HeaderTimeout)
		if err == nil {
			break
		}
		uc.close()
		uc = nil
		// A pooled connection the origin closed just as we wrote to it:
		// nothing was sent or received, so a bodiless request is safe to
		// send again on a new connection, as http.Transport does.
		if reused && out.Body == http.NoBody && retryable(err) {
			continue
		}
		keep := bodyDone(req.Body) && !req.Close
		status, msg := http.StatusBadGateway, "upstream error from "+quote(hostport)
		if pool.Classify(err) == pool.ClassTimeout {
			status, msg = http.StatusGatewayTimeout, quote(hostport)+" sent no response head in time"
			err = fmt.Errorf("%w: %w", errResponseTimeout, err)
		}
		cc.writeError(status, msg, !keep, nil)
		s.logRequest(req, user, src, status, bodyRead(req.Body), 0, start, err)
		return keep
	}

	down, keep, reusable, err := cc.writeResponse(req, resp, uc)
	if reusable && reuse && !src.Block {
		s.upstreams.Get(src).put(uc)
	} else {
		uc.close()
	}
	s.logRequest(req, user, src, resp.StatusCode, bodyRead(req.Body), down, start, err)
	return keep
}

// outgoing is the request sent upstream: the client's, less hop-by-hop
// fields. rotor adds nothing that names the client (no Via, no
// X-Forwarded-For) and passes the client's own forwarding headers on.
func outgoing(req *http.Request) *http.Request {
	h := req.Header
	teTrailers := httpguts.HeaderValuesContainsToken(h["Te"], "trailers")
	removeHopByHop(h)
	if teTrailers {
		h["Te"] = []string{"trailers"}
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""} // or Request.Write adds Go's own
	}
	out := &http.Request{
		Method: req.Method, URL: req.URL, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: req.Body, ContentLength: req.ContentLength, TransferEncoding: req.TransferEncoding,
		Host: req.Host,
	}
	if cb, ok := req.Body.(*chunkedBody); ok {
		// Request.Write sends the trailer map's contents after the last
		// chunk; the chunked reader fills it when it reaches the end.
		out.Trailer = http.Header{}
		cb.trailer = out.Trailer
	}
	return out
}

// roundTrip writes out on uc and reads the response head, passing 1xx
// interim responses on to the client. An origin that sends no response
// head within headTimeout of the request being written is a timeout (504):
// one that accepts and never answers must not hold the client forever.
func roundTrip(cc *clientConn, uc *upConn, out *http.Request, headTimeout time.Duration) (*http.Response, error) {
	if err := out.Write(uc.bw); err != nil {
		return nil, err
	}
	if err := uc.bw.Flush(); err != nil {
		return nil, err
	}
	if err := uc.c.SetReadDeadline(time.Now().Add(headTimeout)); err != nil {
		return nil, err
	}
	defer uc.c.SetReadDeadline(time.Time{})
	for {
		resp, err := http.ReadResponse(uc.br, out)
		if err != nil {
			return nil, err
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			return nil, errors.New("origin switched protocols, which rotor does not forward")
		case resp.StatusCode >= 200:
			return resp, nil
		}
		// 1xx interim (103 Early Hints): pass it on and read on.
		removeHopByHop(resp.Header)
		cc.bw.WriteString("HTTP/1.1 " + resp.Status + "\r\n")
		_ = resp.Header.Write(cc.bw)
		cc.bw.WriteString("\r\n")
		if err := cc.bw.Flush(); err != nil {
			return nil, err
		}
	}
}

// errResponseTimeout marks an origin that sent no response head within
// the header timeout, for its log line and count.
var errResponseTimeout = errors.New("response-timeout")

func retryable(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// writeResponse copies resp to the client, framed for it. It reports the
// body bytes sent, whether the client connection may be kept, and whether
// the upstream connection may be reused.
func (cc *clientConn) writeResponse(req *http.Request, resp *http.Response, uc *upConn) (n int64, keep, reusable bool, err error) {
	w := cc.bw
	h := resp.Header
	removeHopByHop(h)
	delete(h, "Content-Length")
	noBody := req.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified
	closeAfter := req.Close
	chunked := false
	w.WriteString("HTTP/1.1 ")
	w.WriteString(resp.Status)
	w.WriteString("\r\n")
	if err := h.Write(w); err != nil {
		return 0, false, false, err
	}
	switch {
	case noBody:
		if req.Method == http.MethodHead && resp.ContentLength >= 0 {
			writeLength(w, resp.ContentLength)
		}
	case resp.ContentLength >= 0:
		writeLength(w, resp.ContentLength)
	case req.ProtoAtLeast(1, 1):
		w.WriteString("Transfer-Encoding: chunked\r\n")
		chunked = true
	default:
		closeAfter = true // an HTTP/1.0 client reads to EOF
	}
	if closeAfter {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("\r\n")

	var rerr, werr error
	if !noBody {
		var dst io.Writer = w
		var cw io.WriteCloser
		if chunked {
			cw = httputil.NewChunkedWriter(w)
			dst = cw
		}
		n, rerr, werr = copyBody(dst, resp.Body, uc.br, w)
		if chunked && rerr == nil && werr == nil {
			werr = cw.Close()
			for k, vv := range resp.Trailer {
				for _, v := range vv {
					w.WriteString(k + ": " + v + "\r\n")
				}
			}
			w.WriteString("\r\n")
		}
	}
	if werr == nil {
		werr = w.Flush()
	}
	// A body cut short upstream must reach the client as a cut: close, so
	// it sees a short Content-Length or an unterminated chunked body.
	keep = !closeAfter && rerr == nil && werr == nil && bodyDone(req.Body)
	reusable = rerr == nil && werr == nil && !resp.Close
	if rerr != nil {
		return n, keep, false, fmt.Errorf("reading response body: %w", rerr)
	}
	if werr != nil {
		return n, keep, false, fmt.Errorf("writing to client: %w", werr)
	}
	return n, keep, reusable, nil
}

func writeLength(w interface{ WriteString(string) (int, error) }, n int64) {
	w.WriteString("Content-Length: ")
	w.WriteString(strconv.FormatInt(n, 10))
	w.WriteString("\r\n")
}

// bodyBufs holds the copy buffers for response bodies.
var bodyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyBody copies src to dst, flushing the client writer whenever the
// upstream reader has nothing more buffered, so that streamed responses
// reach the client as they arrive.
func copyBody(dst io.Writer, src io.Reader, upstream interface{ Buffered() int }, client interface{ Flush() error }) (n int64, rerr, werr error) {
	bp := bodyBufs.Get().(*[]byte)
	defer bodyBufs.Put(bp)
	buf := *bp
	for {
		nr, er := src.Read(buf)
		if nr > 0 {
			nw, ew := dst.Write(buf[:nr])
			n += int64(nw)
			if ew != nil {
				return n, nil, ew
			}
			if upstream.Buffered() == 0 {
				if ew := client.Flush(); ew != nil {
					return n, nil, ew
				}
			}
		}
		if er == io.EOF {
			return n, nil, nil
		}
		if er != nil {
			return n, er, nil
		}
	}
}

// dialUpstream opens a connection to hostport from src, or from the
// source the dialer picks when src is nil, with TLS for https. It returns
// the source used.
func (s *Server) dialUpstream(src *pool.Source, sess pool.Session, scheme, host, hostport, key string) (*upConn, *pool.Source, error) {
	var c *net.TCPConn
	var err error
	if src != nil {
		c, err = s.opts.Dialer.DialFrom(s.baseCtx, src, hostport, sess)
	} else {
		c, src, err = s.opts.Dialer.Dial(s.baseCtx, hostport, sess)
	}
	if err != nil {
		return nil, src, err
	}
	u := &upConn{c: c, raw: c, key: key}
	if scheme == "https" {
		tc := tls.Client(c, &tls.Config{ServerName: host})
		ctx, cancel := context.WithTimeout(s.baseCtx, 10*time.Second)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			c.Close()
			return nil, src, fmt.Errorf("TLS handshake with %s: %w", hostport, err)
		}
		u.c = tc
	}
	u.br = bufio.NewReaderSize(u.c, 4<<10)
	u.bw = bufio.NewWriterSize(u.c, 4<<10)
	return u, src, nil
}

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
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rotor-proxy/rotor/dest"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/tunnel"
)

// exchange is one absolute-form request forwarded to its origin: the
// request, the source it leaves from, and the upstream connection.
type exchange struct {
	cc    *clientConn
	r     *request
	who   identity
	sess  pool.Session
	start time.Time

	eg     pool.Egress // chosen before dialling when the idle pool may serve; Src nil otherwise
	fam    pool.Family
	ip     netip.Addr // the target, when an address literal
	reuse  bool       // the connection may come from and go back to the idle pool
	uc     *upConn
	reused bool // uc came from the idle pool

	continued bool // 100 Continue sent to the client
	cut       bool // the origin answered before taking the whole body
}

// forward sends an absolute-form request to its origin from the next
// source address and copies the response back. It reports whether the
// client connection may carry another request, and whether a tunnel (a
// WebSocket upgrade) now owns it; done is called when the request, or
// that tunnel, ends.
func (cc *clientConn) forward(r *request, who identity, sess pool.Session, start time.Time, done func()) (keep, handedOff bool) {
	s := cc.s
	defer func() {
		if !handedOff {
			done()
		}
	}()
	if r.scheme != "http" && r.scheme != "https" {
		cc.writeError(http.StatusBadRequest, "unsupported scheme "+quote(r.scheme), true, nil)
		s.logRequest(r, who, nil, netip.Addr{}, http.StatusBadRequest, 0, 0, start, nil)
		return false, false
	}
	x := &exchange{cc: cc, r: r, who: who, sess: sess, start: start, fam: pool.Any}
	if ip, ok := dest.ParseHost(r.host); ok {
		x.ip = ip
		x.fam = pool.FamilyOf(r.host)
	}
	// Reusing an upstream connection needs the source chosen before any
	// dial. A name in a pool with both families is resolved first to
	// choose the family (see pool.Dialer.DialName), so it dials afresh;
	// so does a block source, which binds a new random address each time.
	if x.fam != pool.Any || !s.opts.Dialer.PoolFor(sess).Mixed() {
		eg, err := s.opts.Dialer.Choose(s.Ctx, x.fam, sess)
		if err != nil {
			return x.fail(err), false
		}
		x.eg = eg
	}
	x.reuse = x.eg.Src != nil && !x.eg.Src.Block && r.upgrade == "" && !r.bodyIgnorable() && rotatesPerRequest(x.eg.Src.Up, r, sess)
	for attempt := 0; ; attempt++ {
		if err := x.open(attempt == 0); err != nil {
			return x.fail(err), false
		}
		resp, err := x.roundTrip()
		if err == nil {
			if resp.status == http.StatusSwitchingProtocols {
				return x.upgrade(resp, done)
			}
			return x.respond(resp), false
		}
		x.uc.close()
		if attempt == 0 && x.retry(err) {
			continue
		}
		return x.fail(err), false
	}
}

// rotatesPerRequest reports whether reusing an idle connection through up
// (nil: a local source) keeps every request leaving from the address
// rotation would give it. A local source is the address itself. An HTTP
// upstream given the request in absolute form picks an address per
// request, as rotor does. A tunnel through an upstream is one of its
// addresses for as long as it lasts: reused, consecutive requests would
// leave from one address, so only a session's requests (which want one
// address) reuse it.
func rotatesPerRequest(up *pool.Upstream, r *request, sess pool.Session) bool {
	switch {
	case up == nil:
		return true
	case up.Kind.IsHTTP() && r.scheme == "http":
		return true
	}
	return sess.Key != ""
}

// open takes an idle connection to the origin, when it may, or dials one.
func (x *exchange) open(mayReuse bool) error {
	s := x.cc.s
	x.uc, x.reused = nil, false
	if mayReuse && x.reuse {
		if uc := s.idle.take(x.eg.Src, x.key(x.eg.Local)); uc != nil {
			x.uc, x.reused = uc, true
			return nil
		}
	}
	uc, used, err := s.dialUpstream(x.eg, x.sess, x.r)
	if err != nil && x.eg.Src != nil && pool.IsLocal(err) {
		// The source left the host: OpenTCP took it out of rotation;
		// try once over another egress.
		if next, cerr := s.opts.Dialer.Choose(s.Ctx, x.fam, x.sess); cerr == nil && next.Src != x.eg.Src {
			uc, used, err = s.dialUpstream(next, x.sess, x.r)
		}
	}
	if used.Src != nil {
		x.eg = used
	}
	if err != nil {
		return err
	}
	uc.key = x.key(uc.local)
	if x.eg.Src != nil && x.eg.Src.Up != nil {
		// Through an upstream entry the local address is the socket's to
		// the upstream: connections are the entry's, as Choose named it.
		uc.key = x.key(x.eg.Local)
	}
	x.uc = uc
	return nil
}

// key is the idle-pool key of this request from local.
func (x *exchange) key(local netip.Addr) upKey {
	k := upKey{local: local, tls: x.r.scheme == "https", ip: x.ip, port: x.r.port}
	if !x.ip.IsValid() {
		k.name = lower(x.r.host)
	}
	if x.who.verified {
		k.user = x.who.name
	} else {
		k.client = x.cc.client
	}
	if src := x.eg.Src; src != nil && src.Up != nil && src.Up.SessionPass {
		k.session = x.sess.Key
	}
	return k
}

// lower is strings.ToLower without an allocation for names already in
// lower case, as nearly all are.
func lower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

// retry reports whether a request that failed on a reused connection may
// be sent again on a new one: the origin closed the idle connection as it
// was written to (a stale keep-alive), no byte of a response came, nothing
// of a body was taken from the client, and sending twice is safe.
func (x *exchange) retry(err error) bool {
	if !x.reused || x.uc.nread > 0 || x.r.body != nil || !x.r.retrySafe() {
		return false
	}
	if _, ok := errors.AsType[*clientError](err); ok {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// clientError is a failure on the client's side while its body was
// forwarded: framing (400), a stall (idle timeout), or the client gone.
type clientError struct{ err error }

func (e *clientError) Error() string { return "reading request body: " + e.err.Error() }
func (e *clientError) Unwrap() error { return e.err }

// roundTrip writes the request head and body upstream and reads the
// response head, passing 1xx interim responses on.
func (x *exchange) roundTrip() (*response, error) {
	uc, r := x.uc, x.r
	x.cut = false
	uc.nread = 0
	writeRequestHead(uc.bw, r, uc.proxy)
	var err error
	if r.body != nil {
		x.sendContinue()
		err = x.sendBody()
	} else {
		x.deadline(uc.c, false)
		err = uc.bw.Flush()
	}
	if err != nil {
		if _, ok := errors.AsType[*clientError](err); ok || uc.nread == 0 && !x.readable() {
			return nil, err
		}
		// The origin stopped taking the body and may have answered
		// already (a 413, a 401): forward what it said, then close.
		resp, rerr := x.readFinal()
		if rerr != nil {
			return nil, err
		}
		x.cut = true
		return resp, nil
	}
	return x.readFinal()
}

// readable reports whether the origin has sent anything yet.
func (x *exchange) readable() bool {
	return x.uc.br.Buffered() > 0 || !alive(x.uc.raw)
}

// sendContinue answers Expect: 100-continue once a connection to the
// origin is open: rotor reads the body anyway, and the origin may not
// speak HTTP/1.1 continue. A refusal before this point (407, 403, a failed
// dial) reaches the client before it sends any body byte.
func (x *exchange) sendContinue() {
	if !x.r.expect100 || x.continued || x.r.bodyDone() || x.r.minor == 0 {
		return
	}
	x.continued = true
	x.cc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
	x.deadline(x.cc.c, false)
	_ = x.cc.bw.Flush()
}

// sendBody streams the request body upstream, framed as it came (length
// or chunked, with the trailer fields that may pass), flushing whenever
// the client has nothing more buffered.
func (x *exchange) sendBody() error {
	uc, r, cc := x.uc, x.r, x.cc
	bp := bodyBufs.Get().(*[]byte)
	defer bodyBufs.Put(bp)
	buf := *bp
	for {
		x.deadline(cc.c, true)
		n, rerr := r.body.Read(buf)
		if n > 0 {
			x.deadline(uc.c, false)
			var werr error
			if r.length < 0 {
				werr = writeChunk(uc.bw, buf[:n])
			} else {
				_, werr = uc.bw.Write(buf[:n])
			}
			if werr == nil && cc.br.Buffered() == 0 {
				werr = uc.bw.Flush()
			}
			if werr != nil {
				return werr
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return &clientError{rerr}
		}
	}
	x.deadline(uc.c, false)
	if cr, ok := r.body.(*chunkedReader); ok {
		if err := writeLastChunk(uc.bw, cr.trailer); err != nil {
			return err
		}
	}
	return uc.bw.Flush()
}

// maxInterim bounds the 1xx responses an origin may send before its final
// one.
const maxInterim = 16

// readFinal reads the origin's final response head, passing 1xx interim
// responses on to an HTTP/1.1 client (a 100 only when rotor has not sent
// its own). An origin that sends no final head within the header timeout
// of the request being written is a timeout (504): one that accepts and
// never answers must not hold the client forever.
func (x *exchange) readFinal() (*response, error) {
	s, uc := x.cc.s, x.uc
	if err := uc.c.SetReadDeadline(time.Now().Add(s.opts.HeaderTimeout)); err != nil {
		return nil, err
	}
	for i := 0; ; i++ {
		resp, err := readResponse(uc.br, s.opts.MaxHeaderBytes, &uc.buf, x.r.method)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				err = fmt.Errorf("%w: %w", errResponseTimeout, err)
			}
			return nil, err
		}
		switch {
		case resp.status == http.StatusSwitchingProtocols:
			if x.r.upgrade == "" {
				return nil, badOrigin("101 Switching Protocols to a request that asked for no upgrade")
			}
			return resp, nil
		case resp.status == http.StatusProxyAuthRequired && uc.proxy != nil:
			// The upstream refused rotor's credentials: rotor's failure,
			// never a 407 that would have the client resend its own.
			err := fmt.Errorf("upstream %s: %w", x.eg.Src.Label, pool.ErrUpstreamAuth)
			s.opts.Dialer.NoteUpstream(x.eg.Src, err)
			return nil, err
		case resp.status >= 200:
			if uc.proxy != nil {
				s.opts.Dialer.NoteUpstream(x.eg.Src, nil)
			}
			return resp, nil
		case i == maxInterim:
			return nil, badOrigin("more than %d interim responses", maxInterim)
		case x.r.minor == 0 || resp.status == http.StatusContinue && (x.continued || !x.r.expect100):
			continue
		}
		writeResponseHead(x.cc.bw, resp, responseFraming{})
		x.deadline(x.cc.c, false)
		if err := x.cc.bw.Flush(); err != nil {
			return nil, &clientError{err}
		}
		if resp.status == http.StatusContinue {
			x.continued = true
		}
	}
}

// errResponseTimeout marks an origin that sent no response head within
// the header timeout, for its log line and count.
var errResponseTimeout = errors.New("response-timeout")

// respond copies the response to the client and logs the request.
func (x *exchange) respond(resp *response) bool {
	down, keep, err := x.relay(resp)
	x.cc.s.logRequest(x.r, x.who, x.eg.Src, x.uc.local, resp.status, x.r.bodyRead(), down, x.start, err)
	return keep
}

// release gives the upstream connection back to the idle pool when that is
// safe: the response was read exactly to its end with nothing behind it,
// its framing left no doubt, and the request was sent whole with no body
// its method ignores. Otherwise it closes the connection.
func (x *exchange) release(resp *response, framed bool) {
	if framed && x.reuse && resp.reusable && !x.cut && x.r.bodyDone() {
		x.cc.s.idle.put(x.eg.Src, x.uc)
	} else {
		x.uc.close()
	}
}

// relay writes the response head and body to the client, framed for it:
// Content-Length when the origin sent one; chunked for an HTTP/1.1 client
// otherwise; for an HTTP/1.0 client, Connection: keep-alive with a length,
// or Connection: close and a body that ends with the connection. The
// upstream connection is released (see release) once the body is read,
// before the last flush to the client, so that the client's next request
// finds it idle. It reports the body bytes sent and whether the client
// connection may carry another request.
func (x *exchange) relay(resp *response) (n int64, keep bool, err error) {
	cc, uc, r := x.cc, x.uc, x.r
	var body clientBody
	switch {
	case resp.noBody:
	case resp.chunked:
		body = newChunkedReader(uc.br, x.cc.s.bodyLimits(), &uc.buf)
	case resp.length > 0:
		body = &fixedReader{r: uc.br, n: resp.length}
	case resp.length < 0:
		body = &closeReader{r: uc.br}
	}
	fr := responseFraming{length: resp.noBody || resp.length >= 0 && !resp.chunked}
	fr.close = r.close || x.cut || !r.bodyDone()
	if !fr.length {
		if r.minor >= 1 {
			fr.chunked = true
		} else {
			fr.close = true // an HTTP/1.0 client reads to the close
		}
	}
	fr.keepAlive = r.minor == 0 && !fr.close
	writeResponseHead(cc.bw, resp, fr)

	var rerr, werr error
	if body != nil {
		n, rerr, werr = x.copyResponse(body, fr.chunked)
	}
	_, closeDelimited := body.(*closeReader)
	x.release(resp, rerr == nil && werr == nil && (body == nil || body.done()) && !closeDelimited && uc.br.Buffered() == 0)
	if werr == nil {
		x.deadline(cc.c, false)
		werr = cc.bw.Flush()
	}
	// A body cut short upstream must reach the client as a cut: close, so
	// it sees a short Content-Length or an unterminated chunked body.
	keep = !fr.close && rerr == nil && werr == nil
	switch {
	case rerr != nil:
		return n, false, idle(fmt.Errorf("reading response body: %w", rerr))
	case werr != nil:
		return n, false, idle(fmt.Errorf("writing to client: %w", werr))
	}
	return n, keep, nil
}

// copyResponse copies a response body to the client, chunk-framed when
// chunked, flushing whenever the origin has nothing more buffered so that
// streamed responses reach the client as they arrive. Each read and write
// has the idle timeout: a stall either way ends the exchange.
func (x *exchange) copyResponse(body clientBody, chunked bool) (n int64, rerr, werr error) {
	cc, uc := x.cc, x.uc
	bp := bodyBufs.Get().(*[]byte)
	defer bodyBufs.Put(bp)
	buf := *bp
	for {
		x.deadline(uc.c, true)
		nr, er := body.Read(buf)
		if nr > 0 {
			x.deadline(cc.c, false)
			if chunked {
				werr = writeChunk(cc.bw, buf[:nr])
			} else {
				_, werr = cc.bw.Write(buf[:nr])
			}
			// The last bytes wait for the final flush, after the
			// connection is released.
			if werr == nil && uc.br.Buffered() == 0 && !body.done() {
				werr = cc.bw.Flush()
			}
			if werr != nil {
				return n, nil, werr
			}
			n += int64(nr)
		}
		if er == io.EOF {
			if chunked {
				var tr header
				if cr, ok := body.(*chunkedReader); ok {
					tr = cr.trailer
				}
				werr = writeLastChunk(cc.bw, tr)
			}
			return n, nil, werr
		}
		if er != nil {
			return n, er, nil
		}
	}
}

// deadline gives the next read (or write) on c the idle timeout: a
// forwarded body that moves no byte either way for that long ends both
// connections. Zero means no bound.
func (x *exchange) deadline(c net.Conn, read bool) {
	var t time.Time
	if d := x.cc.s.opts.TunnelIdleTimeout; d > 0 {
		t = time.Now().Add(d)
	}
	if read {
		_ = c.SetReadDeadline(t)
	} else {
		_ = c.SetWriteDeadline(t)
	}
}

// idle marks a body that stalled past the idle timeout, for its log line
// and count (idle-timeout).
func idle(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: %w", tunnel.ErrIdle, err)
	}
	return err
}

// bodyBufs holds the copy buffers for bodies.
var bodyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// dialUpstream opens a connection to the request's origin over eg, or
// over the egress the dialer chooses when eg has no source, with TLS for
// https. It returns the egress used (with a source, even on failure, for
// the log).
func (s *Server) dialUpstream(eg pool.Egress, sess pool.Session, r *request) (*upConn, pool.Egress, error) {
	var c net.Conn
	var err error
	hostport := r.hostport()
	var hop *proxyHop
	if eg.Src != nil {
		host, port, serr := pool.SplitTarget(hostport)
		switch up := eg.Src.Up; {
		case serr != nil:
			err = serr
		case up != nil && up.Kind.IsHTTP() && r.scheme == "http" && r.upgrade == "":
			// An HTTP upstream takes the request itself, in absolute form:
			// no CONNECT, which proxies often allow to port 443 only.
			c, err = s.opts.Dialer.OpenProxy(s.Ctx, eg, host, port)
			hop = &proxyHop{auth: up.ProxyAuthorization(eg.Session)}
		default:
			c, err = s.opts.Dialer.OpenTCP(s.Ctx, eg, host, port)
		}
	} else {
		var src *pool.Source
		c, src, err = s.opts.Dialer.Dial(s.Ctx, hostport, sess)
		eg.Src = src
	}
	if err != nil {
		return nil, eg, err
	}
	u := &upConn{c: c, raw: pool.TCPConnOf(c), proxy: hop}
	if la, ok := c.LocalAddr().(*net.TCPAddr); ok {
		u.local = la.AddrPort().Addr().Unmap()
	}
	if r.scheme == "https" {
		tc := tls.Client(c, &tls.Config{ServerName: r.host})
		ctx, cancel := context.WithTimeout(s.Ctx, 10*time.Second)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			c.Close()
			return nil, eg, fmt.Errorf("TLS handshake with %s: %w", hostport, err)
		}
		u.c = tc
	}
	u.br = bufio.NewReaderSize(countReader{u}, 4<<10)
	u.bw = bufio.NewWriterSize(u.c, 4<<10)
	return u, eg, nil
}

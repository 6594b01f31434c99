package httpproxy

import (
	"errors"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/rotor-proxy/rotor/metrics"
	"github.com/rotor-proxy/rotor/pool"
)

// fail answers a request that got no response to forward, and logs it. It
// reports whether the client connection may carry another request: only
// when the request was read to its end (or can be, see drain) and the
// failure was not on the client's side.
func (x *exchange) fail(err error) bool {
	cc, s, r := x.cc, x.cc.s, x.r
	var status int
	msg := ""
	closeAfter := true
	ce, fromClient := errors.AsType[*clientError](err)
	switch {
	case fromClient:
		// The client's own body: malformed framing is its error; a stall
		// is the idle timeout; a client gone has nobody to answer.
		_, framing := errors.AsType[*framingError](ce.err)
		switch {
		case framing:
			status, msg = http.StatusBadRequest, "malformed chunked request body"
		case errors.Is(ce.err, os.ErrDeadlineExceeded):
			status, msg = http.StatusRequestTimeout, "request body stalled"
			err = idle(err)
		}
	case x.uc == nil:
		// No connection: picking a source or dialing failed, and the
		// body is still unread.
		cl := pool.Classify(err)
		status, msg = statusFor(cl), dialMessage(r.hostport(), cl)
		closeAfter = !cc.drain(r)
	case errors.Is(err, errResponseTimeout):
		status, msg = http.StatusGatewayTimeout, quote(r.hostport())+" sent no response head in time"
	case isOriginError(err):
		status, msg = http.StatusBadGateway, "malformed response from "+quote(r.hostport())
	case errors.Is(err, os.ErrDeadlineExceeded):
		status, msg = http.StatusGatewayTimeout, quote(r.hostport())+" stopped taking the request body"
		err = idle(err)
	default:
		status, msg = http.StatusBadGateway, "upstream error from "+quote(r.hostport())
		closeAfter = !r.bodyDone() || r.close
	}
	if status != 0 {
		x.deadline(cc.c, false)
		cc.writeError(status, msg, closeAfter, nil)
	}
	s.logRequest(r, x.who, x.eg.Src, x.local(), status, r.bodyRead(), 0, x.start, err)
	return !closeAfter && status != 0
}

func isOriginError(err error) bool {
	_, ok := errors.AsType[*originError](err)
	return ok
}

// local is the address the upstream connection was bound to, when there
// was one.
func (x *exchange) local() (a netip.Addr) {
	if x.uc != nil {
		return x.uc.local
	}
	return a
}

// upgrade switches the connection to a tunnel after the origin's 101 to a
// WebSocket upgrade: the 101 head goes to the client, then bytes move both
// ways with the tunnel's relay, idle timeout, metrics and log line. Bytes
// already read past either head go first.
func (x *exchange) upgrade(resp *response, done func()) (keep, handedOff bool) {
	cc, s, uc := x.cc, x.cc.s, x.uc
	writeResponseHead(cc.bw, resp, responseFraming{upgrade: true})
	if n := uc.br.Buffered(); n > 0 {
		b, _ := uc.br.Peek(n)
		cc.bw.Write(b)
	}
	x.deadline(cc.c, false)
	if err := cc.bw.Flush(); err != nil {
		uc.close()
		s.logRequest(x.r, x.who, x.eg.Src, uc.local, resp.status, 0, 0, x.start, err)
		return false, false
	}
	_ = cc.c.SetDeadline(time.Time{})
	_ = uc.c.SetDeadline(time.Time{})
	s.opts.Metrics.Source(x.eg.Src).Request(metrics.HTTP, nil)
	s.startTunnel(cc, uc.c, cc.takeBuffered(), reqInfo(x.r, x.who), x.eg.Src, uc.local, http.StatusSwitchingProtocols, x.start, done)
	return false, true
}

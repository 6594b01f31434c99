package httpproxy

import (
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/rotor-proxy/rotor/metrics"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/tunnel"
)

// connect serves CONNECT host:port: dial first (so failures get a real
// status), then answer 200 and hand the connection to a tunnel.
// done is called when the tunnel ends, or at once if none starts.
func (cc *clientConn) connect(req *request, user string, sess pool.Session, start time.Time, done func()) (keep, handedOff bool) {
	s := cc.s
	target := req.authority
	handed := false
	defer func() {
		if !handed {
			done()
		}
	}()
	up, src, err := s.opts.Dialer.Dial(s.baseCtx, target, sess)
	m := s.opts.Metrics.Source(src)
	m.Request(metrics.Connect, err)
	if err != nil {
		cl := pool.Classify(err)
		status := statusFor(cl)
		cc.writeError(status, dialMessage(target, cl), true, nil)
		s.logRequest(req, user, src, netip.Addr{}, status, 0, 0, start, err)
		return false, false
	}
	local := localAddr(up)
	_, err = cc.bw.Write(established)
	if err == nil {
		err = cc.bw.Flush()
	}
	if err != nil {
		up.Close()
		s.logRequest(req, user, src, local, http.StatusOK, 0, 0, start, err)
		return false, false
	}
	// Bytes sent right behind the CONNECT head (a TLS ClientHello from an
	// eager client) are already in the read buffer: copy them out so that
	// the buffers can go.
	var early []byte
	if n := cc.br.Buffered(); n > 0 {
		b, _ := cc.br.Peek(n)
		early = append([]byte(nil), b...)
	}
	c := cc.c
	// The tunnel runs on goroutines of its own; this worker goes back to
	// accepting, and the connection's buffers back to their pool. Only
	// what the log line needs is kept, not the request.
	info := reqInfo(req, user)
	m.TunnelOpened()
	t := tunnel.Start(c, up, early, tunnel.Options{Idle: s.opts.TunnelIdleTimeout, Go: s.acc.Go, Parker: &s.parker,
		Count: m.TunnelCount()},
		func(st tunnel.Stats, err error) {
			done()
			m.TunnelClosed()
			up.Close()
			s.conns.Remove(c)
			c.Close()
			s.log(info, src, local, http.StatusOK, st.Up, st.Down, start, err)
		})
	s.conns.SetCloser(c, t.Close)
	handed = true
	return false, true
}

var established = []byte("HTTP/1.1 200 Connection established\r\n\r\n")

// localAddr is the address a connection was bound to: for a block entry,
// the one drawn from it, which the log names (metrics name the block).
func localAddr(c net.Conn) netip.Addr {
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

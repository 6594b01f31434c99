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
func (cc *clientConn) connect(req *request, who identity, sess pool.Session, start time.Time, done func()) (keep, handedOff bool) {
	s := cc.s
	target := req.authority
	handed := false
	defer func() {
		if !handed {
			done()
		}
	}()
	up, src, err := s.opts.Dialer.Dial(s.Ctx, target, sess)
	m := s.opts.Metrics.Source(src)
	m.Request(metrics.Connect, err)
	if err != nil {
		cl := pool.Classify(err)
		status := statusFor(cl)
		cc.writeError(status, dialMessage(target, cl), true, nil)
		s.logRequest(req, who, src, netip.Addr{}, status, 0, 0, start, err)
		return false, false
	}
	local := localAddr(up)
	_, err = cc.bw.Write(established)
	if err == nil {
		err = cc.bw.Flush()
	}
	if err != nil {
		up.Close()
		s.logRequest(req, who, src, local, http.StatusOK, 0, 0, start, err)
		return false, false
	}
	// Bytes sent right behind the CONNECT head (a TLS ClientHello from an
	// eager client) go first.
	s.startTunnel(cc, up, cc.takeBuffered(), reqInfo(req, who), src, local, http.StatusOK, start, done)
	handed = true
	return false, true
}

// takeBuffered copies out what the client sent behind the head just read,
// so that the connection's buffers can go back to their pool.
// Bytes of the mixed port's first read not yet in br (none while that
// read is no larger than br) follow them.
func (cc *clientConn) takeBuffered() []byte {
	var b []byte
	if n := cc.br.Buffered(); n > 0 {
		b, _ = cc.br.Peek(n)
	}
	if len(b)+len(cc.first.Bytes) == 0 {
		return nil
	}
	out := append([]byte(nil), b...)
	out = append(out, cc.first.Bytes...)
	cc.first.Bytes = nil
	return out
}

// startTunnel hands the client connection (cc.c) and the upstream
// connection up to the relay, with bytes already read from the client (early) going
// first. The tunnel runs on goroutines of its own; this worker goes back
// to accepting. When it ends, both connections are closed, done is
// called, and the one log line is written from info (what the log needs,
// kept instead of the request) with status.
func (s *Server) startTunnel(cc *clientConn, up net.Conn, early []byte, info requestInfo, src *pool.Source, local netip.Addr, status int, start time.Time, done func()) {
	c := cc.c
	m := s.opts.Metrics.Source(src)
	m.TunnelOpened()
	t := tunnel.Start(c, up, early, tunnel.Options{Idle: s.opts.TunnelIdleTimeout, Go: s.Acc.Go, Parker: &s.Parker,
		Count: m.TunnelCount()},
		func(st tunnel.Stats, err error) {
			done()
			m.TunnelClosed()
			up.Close()
			c.Close()
			s.log(info, src, local, status, st.Up, st.Down, start, err)
			s.Conns.Remove(cc.id) // last: a drain returns after the line is logged
		})
	s.Conns.SetCloser(cc.id, t.Close)
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

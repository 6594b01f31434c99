package httpproxy

import (
	"net"
	"net/http"
	"time"

	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/tunnel"
)

var established = []byte("HTTP/1.1 200 Connection established\r\n\r\n")

// connect serves CONNECT host:port: dial first (so failures get a real
// status), then answer 200, hijack, and relay.
func (s *Server) connect(w http.ResponseWriter, r *http.Request, user string, start time.Time) {
	target := r.Host
	if _, _, err := net.SplitHostPort(target); err != nil {
		reply(w, http.StatusBadRequest, "CONNECT needs host:port, got "+quote(target))
		s.logRequest(r, user, nil, http.StatusBadRequest, 0, 0, start, err)
		return
	}
	// r.Context ends when the client goes away, which cancels the dial.
	// net/http reads a FIN before our 200 as going away too: a client
	// that half-closes before the tunnel is up gets no tunnel.
	up, src, err := s.opts.Dialer.Dial(r.Context(), target)
	if err != nil {
		cl := pool.Classify(err)
		status := statusFor(cl)
		reply(w, status, dialMessage(target, cl))
		s.logRequest(r, user, src, status, 0, 0, start, err)
		return
	}
	defer up.Close()

	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		reply(w, http.StatusInternalServerError, "cannot take over the connection")
		s.logRequest(r, user, src, http.StatusInternalServerError, 0, 0, start, err)
		return
	}
	defer c.Close()
	if !s.tunnels.Add(c) {
		return // shutting down
	}
	defer s.tunnels.Remove(c)
	// The server's header deadline may still be armed on the raw conn.
	if err := c.SetDeadline(time.Time{}); err != nil {
		s.logRequest(r, user, src, http.StatusOK, 0, 0, start, err)
		return
	}
	if _, err := c.Write(established); err != nil {
		s.logRequest(r, user, src, http.StatusOK, 0, 0, start, err)
		return
	}
	// Bytes sent right behind the CONNECT head (a TLS ClientHello from an
	// eager client) are already in the server's read buffer.
	early, _ := brw.Reader.Peek(brw.Reader.Buffered())
	st, err := tunnel.Relay(c, up, early)
	s.logRequest(r, user, src, http.StatusOK, st.Up, st.Down, start, err)
}

// quote keeps log and body lines one line long whatever the client sent.
func quote(s string) string {
	if len(s) > 256 {
		s = s[:256] + "..."
	}
	b := make([]byte, 0, len(s)+2)
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f && c != '"' && c != '\\' {
			b = append(b, c)
		} else {
			b = append(b, '\\', 'x', "0123456789abcdef"[c>>4], "0123456789abcdef"[c&15])
		}
	}
	return string(append(b, '"'))
}

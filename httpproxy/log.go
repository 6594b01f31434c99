package httpproxy

import (
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"github.com/rotor-proxy/rotor/pool"
)

// logRequest writes the one line per request or tunnel. It never logs
// Proxy-Authorization or any other header.
func (s *Server) logRequest(r *http.Request, user string, src *pool.Source, status int, up, down int64, start time.Time, err error) {
	lvl := zerolog.InfoLevel
	if status >= 500 {
		lvl = zerolog.WarnLevel
	}
	e := s.opts.Log.WithLevel(lvl)
	if !e.Enabled() {
		return
	}
	proto := "http"
	target := r.URL.Host
	if r.Method == http.MethodConnect {
		proto, target = "connect", r.Host
	}
	e = e.Str("proto", proto).Str("client", r.RemoteAddr)
	if user != "" {
		e = e.Str("user", user)
	}
	if proto == "http" {
		e = e.Str("method", r.Method)
	}
	e = e.Str("target", target) // zerolog escapes control bytes
	if src != nil {
		e = e.Stringer("src", src.Addr)
	}
	e = e.Int("status", status).Int64("up", up).Int64("down", down).Dur("dur_ms", time.Since(start))
	if err != nil {
		e = e.Err(err)
	}
	e.Msg(proto)
}

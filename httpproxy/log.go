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
	if r.Method == http.MethodConnect {
		proto = "connect"
	}
	e = e.Str("proto", proto).Str("client", r.RemoteAddr)
	if user != "" {
		e = e.Str("user", user)
	}
	if proto == "http" {
		e = e.Str("method", r.Method)
	}
	e = e.Str("target", r.URL.Host) // zerolog escapes control bytes
	if src != nil {
		e = e.Stringer("src", src.Addr)
	}
	e = e.Int("status", status).Int64("up", up).Int64("down", down).Dur("dur_ms", time.Since(start))
	if err != nil {
		e = e.Err(err)
	}
	e.Msg(proto)
}

// statusFor maps a dial failure to the status a client sees.
func statusFor(cl pool.Class) int {
	switch cl {
	case pool.ClassTimeout:
		return http.StatusGatewayTimeout
	case pool.ClassBadTarget:
		return http.StatusBadRequest
	}
	return http.StatusBadGateway
}

// dialMessage is the one-line body for a failed dial: the class, never the
// raw error text, which may carry internal details.
func dialMessage(target string, cl pool.Class) string {
	var why string
	switch cl {
	case pool.ClassRefused:
		why = "connection refused"
	case pool.ClassNetUnreachable:
		why = "network unreachable"
	case pool.ClassHostUnreachable:
		why = "host unreachable"
	case pool.ClassDNS:
		why = "name does not resolve in the source address's family"
	case pool.ClassTimeout:
		why = "timed out"
	case pool.ClassBadTarget:
		why = "bad target, want host:port with port 1-65535"
	case pool.ClassNoSource:
		why = "no source address of the target's family"
	case pool.ClassCanceled:
		why = "request canceled"
	default:
		why = "upstream error"
	}
	return "cannot reach " + quote(target) + ": " + why
}

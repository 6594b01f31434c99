package httpproxy

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/rotor-proxy/rotor/metrics"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
	"github.com/rotor-proxy/rotor/tunnel"
)

// requestInfo is what a log line says about a request: for a tunnel it is
// kept instead of the request, which may be large.
type requestInfo struct {
	method, client, target string
	who                    identity
}

// reqInfo copies what the log line needs, so that a tunnel does not keep
// the request head alive.
func reqInfo(r *request, who identity) requestInfo {
	return requestInfo{method: strings.Clone(r.method), client: r.remote, who: who, target: strings.Clone(r.authority)}
}

// logRequest writes the one line per request or tunnel. It never logs
// Proxy-Authorization or any other header.
// local is the address bound, when known.
func (s *Server) logRequest(r *request, who identity, src *pool.Source, local netip.Addr, status int, up, down int64, start time.Time, err error) {
	if src != nil && r.method != http.MethodConnect {
		// A CONNECT is counted when its dial ends; its bytes as they flow.
		m := s.opts.Metrics.Source(src)
		m.Request(metrics.HTTP, err)
		m.Bytes(up, down)
	}
	if !s.opts.Log.WithLevel(levelFor(status)).Enabled() {
		s.count(err)
		return
	}
	s.log(reqInfo(r, who), src, local, status, up, down, start, err)
}

func levelFor(status int) zerolog.Level {
	if status >= 500 {
		return zerolog.WarnLevel
	}
	return zerolog.InfoLevel
}

func (s *Server) log(r requestInfo, src *pool.Source, local netip.Addr, status int, up, down int64, start time.Time, err error) {
	s.count(err)
	lvl := levelFor(status)
	e := s.opts.Log.WithLevel(lvl)
	if !e.Enabled() {
		return
	}
	proto := "http"
	if r.method == http.MethodConnect {
		proto = "connect"
	}
	e = e.Str("proto", proto).Str("client", r.client)
	switch {
	case r.who.verified:
		e = e.Str("user", r.who.name)
	case r.who.name != "":
		e = e.Str("unverified_user", r.who.name)
	}
	if proto == "http" {
		e = e.Str("method", r.method)
	}
	e = e.Str("target", r.target) // zerolog escapes control bytes
	switch {
	case src != nil && src.Up != nil:
		e = e.Str("src", src.Label) // an upstream entry, without its credentials
	case local.IsValid():
		e = e.Stringer("src", local)
	case src != nil:
		e = e.Stringer("src", src.Addr)
	}
	e = e.Int("status", status).Int64("up", up).Int64("down", down).Dur("dur_ms", time.Since(start))
	if err != nil {
		e = hitOf(err).Field(e.Err(err))
	}
	e.Msg(proto)
}

// hitOf is the timeout or limit that ended a request, if one did.
func hitOf(err error) serve.Hit {
	switch le, isLimit := errors.AsType[*limitError](err); {
	case isLimit:
		return le.hit
	case errors.Is(err, tunnel.ErrIdle):
		return serve.IdleTimeout
	case errors.Is(err, errResponseTimeout):
		return serve.ResponseTimeout
	case pool.Classify(err) == pool.ClassRateLimited:
		return serve.PerIPRate
	}
	return pool.TimeoutHit(err)
}

// count counts the timeout or limit behind err, if any, once per request.
func (s *Server) count(err error) {
	if err != nil {
		s.opts.Hits.Add(hitOf(err))
	}
}

// statusFor maps a dial failure to the status a client sees.
func statusFor(cl pool.Class) int {
	switch cl {
	case pool.ClassTimeout:
		return http.StatusGatewayTimeout
	case pool.ClassBadTarget:
		return http.StatusBadRequest
	case pool.ClassForbidden:
		return http.StatusForbidden
	case pool.ClassRateLimited:
		return http.StatusTooManyRequests
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
	case pool.ClassNoSuchHost:
		why = "no such host"
	case pool.ClassDNS:
		why = "the name does not resolve to an address of the pool's families"
	case pool.ClassTimeout:
		why = "timed out"
	case pool.ClassBadTarget:
		why = "bad target, want host:port with port 1-65535"
	case pool.ClassNoSource:
		why = "no source address of the target's family"
	case pool.ClassCanceled:
		why = "request canceled"
	case pool.ClassForbidden:
		why = "destination not allowed (loopback, private, link-local, this host's own addresses or rotor itself)"
	case pool.ClassRateLimited:
		why = "every source address is at its --per-ip-rate; try again later"
	default:
		why = "upstream error"
	}
	return "cannot reach " + quote(target) + ": " + why
}

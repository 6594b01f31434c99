// Package httpproxy serves rotor's HTTP/1.1 proxy: CONNECT tunnels and
// absolute-form forwarding, both leaving from an egress chosen from the
// shared pool.
//
//	conn loop ─▶ read head ─▶ auth ─┬─ CONNECT ─▶ Dialer.Dial ─▶ 200 ─▶ tunnel.Start
//	    ▲                           └─ GET http://… ─▶ Choose ─▶ idle conn, or OpenTCP ─▶ response
//	    └──────────── keep-alive ◀──────────────────────────────────────────┘
//
// A CONNECT: serve.Core accepts the connection (conn.go), readRequest
// reads the head within the header timeout (head.go, request.go),
// authorize checks the credentials (auth.go), connect.go asks the dialer
// (package pool, which checks package dest's policy) for a connection
// from the next source, answers 200 and hands both sockets to
// tunnel.Start. An absolute-form request goes through forward.go instead:
// the head is rewritten without hop-by-hop fields (headers.go), sent on
// an idle upstream connection of the same user, egress and origin
// (upstream.go) or a new one, and the response is framed and copied back
// (response.go, body.go).
//
// Each client connection is served by one goroutine that reads a request,
// writes it upstream and copies the response back, with no hand-off to
// other goroutines: net/http's Server+ReverseProxy+Transport path passed
// every request through four goroutines and cost about twice the CPU (see
// BENCHMARKS.md). Heads are read and written by rotor's own bounded
// parser, not net/http's.
package httpproxy

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"github.com/rs/zerolog"

	"github.com/rotor-proxy/rotor/auth"
	"github.com/rotor-proxy/rotor/metrics"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
)

// Defaults for what Options leaves zero.
const (
	DefaultHeaderTimeout    = 30 * time.Second
	DefaultMaxHeaderBytes   = 64 << 10
	DefaultHandshakeTimeout = 10 * time.Second
)

// Options configure a Server. Dialer is required.
type Options struct {
	Dialer *pool.Dialer
	// Access holds the users, their pools and the client allowlist; nil
	// means no authentication and the Dialer's whole pool.
	Access *auth.Live
	// HeaderTimeout bounds reading a request head; zero means
	// DefaultHeaderTimeout.
	HeaderTimeout time.Duration
	// TLS, when set, serves the proxy inside TLS: every connection Serve
	// accepts, and those given to HandleTLS. HandshakeTimeout bounds the
	// handshake; zero means DefaultHandshakeTimeout.
	TLS              *tls.Config
	HandshakeTimeout time.Duration
	// ProxyProtocol, when set, reads the PROXY protocol header of
	// connections from trusted balancers (--proxy-protocol-from).
	ProxyProtocol *serve.ProxyProto
	// IdleTimeout closes a keep-alive client connection idle this long;
	// zero means two minutes.
	IdleTimeout time.Duration
	// TunnelIdleTimeout closes a CONNECT tunnel that moves no byte either
	// way for this long; zero means never.
	TunnelIdleTimeout time.Duration
	// UpstreamIdleTimeout closes pooled upstream connections idle this
	// long; zero means 90 seconds.
	UpstreamIdleTimeout time.Duration
	Log                 zerolog.Logger
	// Limiter caps client connections, shared by both listeners; nil
	// means no cap.
	Limiter *serve.Limiter
	// Hits counts timeouts and limits by name; nil counts nothing.
	Hits *serve.Hits
	// Metrics counts per source address; Listener counts this listener's
	// auth failures. Both may be nil.
	Metrics  *metrics.Metrics
	Listener *metrics.Listener
	// MaxHeaderBytes caps a request head (431 beyond), an origin's
	// response head (502 beyond) and a chunked body's trailer section;
	// zero means DefaultMaxHeaderBytes (64 KiB, as Squid and
	// g3proxy).
	MaxHeaderBytes int
	// MaxIdleConns caps idle upstream connections in all, and
	// MaxIdlePerSource those from one source address; zero means
	// DefaultMaxIdleConns and DefaultMaxIdlePerSource. Each also holds a
	// slot of Limiter while idle.
	MaxIdleConns, MaxIdlePerSource int
}

// Server is an HTTP proxy.
type Server struct {
	serve.Core
	opts   Options
	idle   *idlePool     // idle upstream connections, per source
	reaper chan struct{} // closed to stop the idle-connection reaper
	reaped chan struct{}
}

// New returns a server; call Serve to start it.
func New(o Options) *Server {
	if o.HeaderTimeout <= 0 {
		o.HeaderTimeout = DefaultHeaderTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 2 * time.Minute
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if o.UpstreamIdleTimeout <= 0 {
		o.UpstreamIdleTimeout = 90 * time.Second
	}
	if o.MaxIdleConns <= 0 {
		o.MaxIdleConns = DefaultMaxIdleConns
	}
	if o.MaxIdlePerSource <= 0 {
		o.MaxIdlePerSource = DefaultMaxIdlePerSource
	}
	s := &Server{opts: o, reaper: make(chan struct{}), reaped: make(chan struct{})}
	s.Init(o.Limiter, o.Hits)
	s.Proxy = o.ProxyProtocol
	s.idle = newIdlePool(o.Dialer.Pool(), o.UpstreamIdleTimeout, o.MaxIdleConns, o.MaxIdlePerSource, o.Limiter)
	o.Limiter.AddReclaim(s.idle.reclaim)
	go s.reap()
	return s
}

// Serve accepts connections on ln until Shutdown or Close; it returns nil
// after those.
func (s *Server) Serve(ln net.Listener) error {
	return s.Core.Serve(ln, s.opts.Log, s.serveConn)
}

// Shutdown stops accepting at once, closes idle keep-alive connections,
// lets in-flight requests and tunnels finish until ctx ends, then closes
// what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.Core.Shutdown(ctx, func() {
		select {
		case <-s.reaper: // an earlier Shutdown stopped it
		default:
			close(s.reaper)
		}
		<-s.reaped
		s.idle.dropAll()
	})
}

// DropSource closes the idle upstream connections from src: it left
// rotation (health, a removed address, a reload), and a request must not
// be sent on a connection whose replies may no longer arrive.
func (s *Server) DropSource(src *pool.Source) { s.idle.drop(src) }

// bodyLimits bound a chunked body's trailer section as a head is bounded.
func (s *Server) bodyLimits() bodyLimits {
	return bodyLimits{trailer: headLimits{s.opts.MaxHeaderBytes, maxHeaderFields}}
}

// reap closes pooled upstream connections that have been idle too long.
func (s *Server) reap() {
	defer close(s.reaped)
	t := time.NewTicker(s.opts.UpstreamIdleTimeout / 3)
	defer t.Stop()
	for {
		select {
		case <-s.reaper:
			return
		case now := <-t.C:
			s.idle.closeIdle(now)
		}
	}
}

// Active returns the number of open client connections, tunnels included.
func (s *Server) Active() int { return s.Conns.Len() }

// Package socks serves SOCKS5 (RFC 1928) with username/password auth
// (RFC 1929). The wire format is parsed by github.com/things-go/go-socks5's
// statute package; this package owns what that library lacks: the accept
// loop, handshake deadlines, a constant-time credential check, the dial
// through rotor's pool, reply codes chosen by error type, the relay and a
// draining shutdown.
//
//	accept ─▶ greeting ─▶ [RFC 1929 auth] ─▶ request ─▶ dial from pool ─▶ reply ─▶ relay
//	          └───────── handshake deadline ─────────────────────────────┘
//
// One connection: serve.Core accepts it on a worker goroutine; negotiate
// reads the greeting, picks the method and checks the credentials against
// package auth (which also applies the user's limits); request reads the
// CONNECT; connect asks the dialer (package pool) for a connection from
// the chosen egress, which package dest's policy must allow, and writes
// the reply code of the error's class; package tunnel relays the two
// sockets, bytes the client sent early first.
package socks

import (
	"context"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/rotor-proxy/rotor/auth"
	"github.com/rotor-proxy/rotor/metrics"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
	"github.com/rotor-proxy/rotor/udploop"
)

// DefaultHandshakeTimeout bounds a handshake when Options says nothing.
const DefaultHandshakeTimeout = 10 * time.Second

// Options configure a Server. Dialer is required.
type Options struct {
	Dialer *pool.Dialer
	// Access holds the users, their pools and the client allowlist; nil
	// means no authentication and the Dialer's whole pool.
	Access *auth.Live
	// HandshakeTimeout bounds greeting, auth, request and dial together.
	// Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// ProxyProtocol, when set, reads the PROXY protocol header of
	// connections from trusted balancers (--proxy-protocol-from).
	ProxyProtocol *serve.ProxyProto
	// IdleTimeout closes a tunnel that moves no byte either way for this
	// long; zero means never.
	IdleTimeout time.Duration
	// UDPIdleTimeout ends a UDP association with no datagram either way
	// for this long; zero means DefaultUDPIdleTimeout.
	UDPIdleTimeout time.Duration
	// UDPPerUser caps the UDP associations of one user (or client address
	// without a user); zero means DefaultUDPPerUser.
	UDPPerUser int
	// UDPLoops is how many event loops read the associations' sockets;
	// zero means one per CPU (GOMAXPROCS).
	UDPLoops int
	Log      zerolog.Logger
	// Limiter caps client connections, shared by both listeners; nil
	// means no cap.
	Limiter *serve.Limiter
	// Hits counts timeouts and limits by name; nil counts nothing.
	Hits *serve.Hits
	// Metrics counts per source address; Listener counts this listener's
	// auth failures. Both may be nil.
	Metrics  *metrics.Metrics
	Listener *metrics.Listener
}

// Server is a SOCKS5 proxy. It is safe to call Serve on several listeners.
type Server struct {
	serve.Core
	opts Options

	udpMu   sync.Mutex
	udpHeld map[string]int // UDP associations by user (or client address)
	udp     *udploop.Group // the associations' sockets, one loop per CPU
}

// New returns a server; call Serve to start it.
func New(o Options) *Server {
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.UDPIdleTimeout <= 0 {
		o.UDPIdleTimeout = DefaultUDPIdleTimeout
	}
	if o.UDPPerUser <= 0 {
		o.UDPPerUser = DefaultUDPPerUser
	}
	if o.UDPLoops <= 0 {
		o.UDPLoops = runtime.GOMAXPROCS(0)
	}
	s := &Server{opts: o, udp: udploop.NewGroup(o.UDPLoops)}
	s.Init(o.Limiter, o.Hits)
	s.Proxy = o.ProxyProtocol
	return s
}

// Serve accepts connections on ln until Shutdown or Close. It returns nil
// after those, or the listener's error.
func (s *Server) Serve(ln net.Listener) error {
	return s.Core.Serve(ln, s.opts.Log, s.serveConn)
}

// Shutdown stops accepting at once, lets live connections finish until
// ctx ends, then closes the rest and waits for their goroutines.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.Core.Shutdown(ctx, s.udp.Close)
}

// Active returns the number of open client connections.
func (s *Server) Active() int { return s.Conns.Len() }

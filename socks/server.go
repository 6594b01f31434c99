// Package socks serves SOCKS5 (RFC 1928) with username/password auth
// (RFC 1929). The wire format is parsed by github.com/things-go/go-socks5's
// statute package; this package owns what that library lacks: the accept
// loop, handshake deadlines, a constant-time credential check, the dial
// through rotor's pool, reply codes chosen by error type, the relay and a
// draining shutdown.
//
//	accept ─▶ greeting ─▶ [RFC 1929 auth] ─▶ request ─▶ dial from pool ─▶ reply ─▶ relay
//	          └───────── handshake deadline ─────────────────────────────┘
package socks

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/tunnel"
)

// Options configure a Server. Dialer is required.
type Options struct {
	Dialer *pool.Dialer
	// Credentials, when set, make RFC 1929 auth mandatory.
	Credentials *config.Credentials
	// HandshakeTimeout bounds greeting, auth, request and dial together.
	// Zero means config.DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	Log              zerolog.Logger
}

// Server is a SOCKS5 proxy. It is safe to call Serve on several listeners.
type Server struct {
	opts  Options
	conns tunnel.Tracker

	baseCtx context.Context // ends at forced close, cancelling dials
	cancel  context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	shutdown  bool
	wg        sync.WaitGroup // connection handlers
}

// New returns a server; call Serve to start it.
func New(o Options) *Server {
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = config.DefaultHandshakeTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{opts: o, baseCtx: ctx, cancel: cancel, listeners: map[net.Listener]struct{}{}}
}

// Serve accepts connections on ln until Shutdown or Close. It returns nil
// after those, or the listener's error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isShutdown() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of fds, or a connection aborted before accept: back off
			// instead of spinning, and keep serving.
			if isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.opts.Log.Warn().Err(err).Dur("retry_in", backoff).Msg("socks5 accept failed")
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		s.wg.Add(1)
		go s.serveConn(c)
	}
}

func (s *Server) isShutdown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
}

// Shutdown stops accepting at once, lets live connections finish until
// ctx ends, then closes the rest and waits for their handlers.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	err := s.conns.Drain(ctx)
	s.cancel()
	s.wg.Wait()
	return err
}

// Close closes the listeners and every connection now.
func (s *Server) Close() error {
	s.closeListeners()
	s.conns.CloseAll()
	s.cancel()
	s.wg.Wait()
	return nil
}

// Active returns the number of open client connections.
func (s *Server) Active() int { return s.conns.Len() }

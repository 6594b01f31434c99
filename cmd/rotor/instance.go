package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/rs/zerolog"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/httpproxy"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/socks"
	"github.com/rotor-proxy/rotor/tunnel"
)

// errConfig marks errors that are the user's configuration (exit 2).
var errConfig = errors.New("configuration error")

// instance is one running rotor: a pool, its dialer and the listeners
// that share them.
type instance struct {
	pool      *pool.Pool
	http      *httpproxy.Server
	socks     *socks.Server
	httpAddr  net.Addr // nil when disabled
	socksAddr net.Addr
	listeners []net.Listener
	hits      *tunnel.Hits // timeouts and limits hit, by name
	wg        sync.WaitGroup
	serveErr  chan error
}

// onceCloseListener lets rotor close a listener itself, so that "stopped
// accepting" is true when it is logged, and lets the server's own Shutdown
// close it again without an error.
type onceCloseListener struct {
	net.Listener
	once sync.Once
	err  error
}

func (l *onceCloseListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}

// start builds the pool (binding each address once to check it), opens
// the listeners and serves in the background. resolver nil means the
// system's.
func start(cfg config.Config, log zerolog.Logger, resolver *net.Resolver) (*instance, error) {
	p, err := pool.New(cfg.Pool, cfg.Strategy)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errConfig, err)
	}
	in := &instance{pool: p, serveErr: make(chan error, 2)}

	// No TCP keepalive probes on client connections: four setsockopt calls
	// per accept, and tunnels are bounded by --idle-timeout instead.
	lc := net.ListenConfig{KeepAlive: -1}
	var hl, sl net.Listener
	if cfg.HTTPListen != "" {
		if hl, err = lc.Listen(context.Background(), "tcp", cfg.HTTPListen); err != nil {
			return nil, fmt.Errorf("HTTP listener: %w", err)
		}
	}
	if cfg.SOCKSListen != "" {
		if sl, err = lc.Listen(context.Background(), "tcp", cfg.SOCKSListen); err != nil {
			if hl != nil {
				hl.Close()
			}
			return nil, fmt.Errorf("SOCKS5 listener: %w", err)
		}
	}
	// The policy refuses rotor's own listeners as destinations: a request
	// for them would loop through the proxy.
	var self []netip.AddrPort
	for _, l := range []net.Listener{hl, sl} {
		if l != nil {
			self = append(self, l.Addr().(*net.TCPAddr).AddrPort())
		}
	}
	d := pool.NewDialer(p, pool.DialerOptions{Timeout: cfg.DialTimeout, DNSTimeout: cfg.DNSTimeout, Resolver: resolver,
		Policy: pool.NewPolicy(cfg.AllowDest, self),
		OnDown: func(src *pool.Source, err error) {
			log.Warn().Stringer("src", src.Addr).Err(err).Msg("source address cannot be bound: out of rotation for 30s")
		}})
	in.hits = &tunnel.Hits{}
	limit := tunnel.NewLimiter(cfg.MaxConns, log, in.hits)
	if hl != nil {
		hl = &onceCloseListener{Listener: hl}
		in.listeners = append(in.listeners, hl)
		in.httpAddr = hl.Addr()
		in.http = httpproxy.New(httpproxy.Options{
			Dialer: d, Credentials: cfg.Credentials, HeaderTimeout: cfg.HeaderTimeout, TunnelIdleTimeout: cfg.IdleTimeout,
			IdleTimeout: cfg.KeepAliveTimeout, Limiter: limit, MaxHeaderBytes: cfg.MaxHeaderBytes, Hits: in.hits,
			Log: log.With().Str("listener", "http").Logger(),
		})
		in.serve(func() error { return in.http.Serve(hl) })
	}
	if sl != nil {
		sl = &onceCloseListener{Listener: sl}
		in.listeners = append(in.listeners, sl)
		in.socksAddr = sl.Addr()
		in.socks = socks.New(socks.Options{
			Dialer: d, Credentials: cfg.Credentials, HandshakeTimeout: cfg.HandshakeTimeout, IdleTimeout: cfg.IdleTimeout,
			Limiter: limit, Hits: in.hits,
			Log: log.With().Str("listener", "socks5").Logger(),
		})
		in.serve(func() error { return in.socks.Serve(sl) })
	}
	return in, nil
}

func (in *instance) serve(f func() error) {
	in.wg.Add(1)
	go func() {
		defer in.wg.Done()
		if err := f(); err != nil {
			in.serveErr <- err
		}
	}()
}

// stopAccepting closes both listeners; live connections go on.
func (in *instance) stopAccepting() {
	for _, l := range in.listeners {
		l.Close()
	}
}

// shutdown stops both listeners at once and drains both in parallel until
// ctx ends; then whatever is left is closed.
func (in *instance) shutdown(ctx context.Context) error {
	in.stopAccepting()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	if in.http != nil {
		wg.Add(1)
		go func() { defer wg.Done(); errs[0] = in.http.Shutdown(ctx) }()
	}
	if in.socks != nil {
		wg.Add(1)
		go func() { defer wg.Done(); errs[1] = in.socks.Shutdown(ctx) }()
	}
	wg.Wait()
	in.wg.Wait()
	return errors.Join(errs...)
}

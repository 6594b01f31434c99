package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/rotor-proxy/rotor/auth"
	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/dest"
	"github.com/rotor-proxy/rotor/httpproxy"
	"github.com/rotor-proxy/rotor/metrics"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/pool/health"
	"github.com/rotor-proxy/rotor/serve"
	"github.com/rotor-proxy/rotor/socks"
)

// errConfig marks errors that are the user's configuration (exit 2).
var errConfig = errors.New("configuration error")

// instance is one running rotor: a pool, its dialer and the listeners
// that share them.
type instance struct {
	cfg        config.Config // as last loaded (reload replaces its pool and users)
	dialer     *pool.Dialer
	access     *auth.Live // users and pool, swapped whole by reload
	reloadMu   sync.Mutex
	log        zerolog.Logger
	http       *httpproxy.Server
	socks      *socks.Server
	httpAddr   net.Addr // nil when disabled
	socksAddr  net.Addr
	listeners  []net.Listener
	httpHits   serve.Hits // timeouts and limits hit, by name
	socksHits  serve.Hits
	metrics    *metrics.Metrics // nil without --metrics-listen
	metricsLn  net.Listener
	metricsSrv *http.Server
	draining   atomic.Bool
	stopHealth context.CancelFunc
	wg         sync.WaitGroup
	serveErr   chan error
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

// listenError says why a listener could not be opened. A port below 1024
// without the privilege to bind it is a configuration error (exit 2, which
// systemd does not restart), with the two ways out.
func listenError(what, addr string, err error) error {
	if errors.Is(err, syscall.EACCES) {
		exe, _ := os.Executable()
		return fmt.Errorf("%w: %s listener %s: a port below 1024 needs privileges: use a port of 1024 or more, or let the binary bind it with setcap cap_net_bind_service=+ep %s",
			errConfig, what, addr, exe)
	}
	return fmt.Errorf("%s listener %s: %w", what, addr, err)
}

// closeListeners closes those of ls that were opened, when start fails.
func closeListeners(ls ...net.Listener) {
	for _, l := range ls {
		if l != nil {
			l.Close()
		}
	}
}

// start builds the pool (binding each address once to check it), opens
// the listeners and serves in the background. resolver nil means the
// system's.
func start(cfg config.Config, log zerolog.Logger, resolver *net.Resolver) (*instance, error) {
	p, err := pool.NewPrefixes(cfg.Pool, cfg.Strategy)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errConfig, err)
	}
	p.SetRate(cfg.PerIPRate, cfg.PerIPBurst)
	st, err := buildState(cfg, p)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errConfig, err)
	}
	in := &instance{cfg: cfg, log: log, access: auth.NewLive(st, cfg.AllowClients), serveErr: make(chan error, 3)}
	hl, sl, err := in.listen()
	if err != nil {
		return nil, err
	}
	d, err := in.newDialer(p, resolver, hl, sl)
	if err != nil {
		closeListeners(hl, sl, in.metricsLn)
		return nil, err
	}
	in.serveProxies(d, hl, sl)
	in.watch(d)
	if in.metricsLn != nil {
		in.metricsSrv = &http.Server{Handler: in.metrics.Handler(in.ready), ReadHeaderTimeout: 10 * time.Second}
		in.serve(func() error {
			if err := in.metricsSrv.Serve(in.metricsLn); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics listener: %w", err)
			}
			return nil
		})
	}
	return in, nil
}

// listen opens the metrics listener (in.metricsLn) and the proxies' (nil
// when disabled); on error none stays open.
func (in *instance) listen() (hl, sl net.Listener, err error) {
	cfg := in.cfg
	if cfg.MetricsListen != "" {
		if in.metricsLn, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			return nil, nil, listenError("metrics", cfg.MetricsListen, err)
		}
	}
	// No TCP keepalive probes on client connections: four setsockopt calls
	// per accept, and tunnels are bounded by --idle-timeout instead.
	lc := net.ListenConfig{KeepAlive: -1}
	if cfg.HTTPListen != "" {
		if hl, err = lc.Listen(context.Background(), "tcp", cfg.HTTPListen); err != nil {
			closeListeners(in.metricsLn)
			return nil, nil, listenError("HTTP", cfg.HTTPListen, err)
		}
	}
	if cfg.SOCKSListen != "" {
		if sl, err = lc.Listen(context.Background(), "tcp", cfg.SOCKSListen); err != nil {
			closeListeners(hl, in.metricsLn)
			return nil, nil, listenError("SOCKS5", cfg.SOCKSListen, err)
		}
	}
	return hl, sl, nil
}

// newDialer builds the destination policy and the dialer over p, with the
// hooks that log and count source changes and dials.
func (in *instance) newDialer(p *pool.Pool, resolver *net.Resolver, listeners ...net.Listener) (*pool.Dialer, error) {
	cfg, log := in.cfg, in.log
	// The policy refuses rotor's own listeners as destinations, whatever
	// --allow-dest says: a request for them would loop through the proxy,
	// or read rotor's metrics.
	var self []netip.AddrPort
	for _, l := range append(listeners, in.metricsLn) {
		if l != nil {
			self = append(self, l.Addr().(*net.TCPAddr).AddrPort())
		}
	}
	// It refuses the host's own addresses too: read here, before the
	// first request, and kept current by WatchAddresses (see watch).
	policy := dest.NewPolicy(cfg.AllowDest, self)
	if err := policy.LoadHostAddrs(); err != nil {
		return nil, err
	}
	dopts := pool.DialerOptions{Prefer: cfg.Prefer, RateWait: cfg.PerIPWait, Timeout: cfg.DialTimeout, DNSTimeout: cfg.DNSTimeout, Resolver: resolver,
		Policy: policy,
		OnChange: func(src *pool.Source, up bool, err error) {
			if up {
				log.Info().Str("src", src.Label).Msg("source address back in rotation")
				return
			}
			log.Warn().Str("src", src.Label).Err(err).Msg("source address out of rotation")
			if in.http != nil {
				in.http.DropSource(src)
			}
		}}
	if in.metricsLn != nil {
		dopts.OnDial = func(src *pool.Source, took time.Duration, err error) { in.metrics.Dialed(src, took, err) }
	}
	d := pool.NewDialer(p, dopts)
	in.dialer = d
	if in.metricsLn != nil {
		in.metrics = metrics.New(d.Pool, version)
	}
	return d, nil
}

// serveProxies starts the HTTP and SOCKS5 servers on their listeners
// (either may be nil), sharing one connection limit.
func (in *instance) serveProxies(d *pool.Dialer, hl, sl net.Listener) {
	cfg, log := in.cfg, in.log
	limit := serve.NewLimiter(cfg.MaxConns, log)
	if hl != nil {
		hl = &onceCloseListener{Listener: hl}
		in.listeners = append(in.listeners, hl)
		in.httpAddr = hl.Addr()
		in.http = httpproxy.New(httpproxy.Options{
			Dialer: d, Access: in.access, HeaderTimeout: cfg.HeaderTimeout, TunnelIdleTimeout: cfg.IdleTimeout,
			IdleTimeout: cfg.KeepAliveTimeout, Limiter: limit, MaxHeaderBytes: cfg.MaxHeaderBytes, Hits: &in.httpHits,
			Log: log.With().Str("listener", "http").Logger(), Metrics: in.metrics,
			Listener: in.metrics.AddListener("http", func() int { return in.http.Active() }, &in.httpHits),
		})
		in.serve(func() error { return in.http.Serve(hl) })
	}
	if sl != nil {
		sl = &onceCloseListener{Listener: sl}
		in.listeners = append(in.listeners, sl)
		in.socksAddr = sl.Addr()
		in.socks = socks.New(socks.Options{
			Dialer: d, Access: in.access, HandshakeTimeout: cfg.HandshakeTimeout, IdleTimeout: cfg.IdleTimeout, UDPIdleTimeout: cfg.UDPIdleTimeout,
			Limiter: limit, Hits: &in.socksHits,
			Log: log.With().Str("listener", "socks5").Logger(), Metrics: in.metrics,
			Listener: in.metrics.AddListener("socks5", func() int { return in.socks.Active() }, &in.socksHits),
		})
		in.serve(func() error { return in.socks.Serve(sl) })
	}
}

// watch starts the health checker and the follower of the host's address
// changes, both ended by stopHealth.
func (in *instance) watch(d *pool.Dialer) {
	cfg, log := in.cfg, in.log
	hctx, cancel := context.WithCancel(context.Background())
	in.stopHealth = cancel
	hopts := health.Options{Target: cfg.HealthTarget, Interval: cfg.HealthInterval, Timeout: cfg.HealthTimeout, Fall: cfg.HealthFall, Rise: cfg.HealthRise,
		OnAllDown: func() {
			log.Error().Int("sources", len(d.Pool().Sources())).
				Msg("every source address is down; still rotating through all of them")
		}}
	if in.metrics != nil {
		hopts.OnProbe = in.metrics.Probed
	}
	in.wg.Add(2)
	go func() { defer in.wg.Done(); health.Run(hctx, d, hopts) }()
	go func() {
		defer in.wg.Done()
		if err := d.WatchAddresses(hctx); err != nil {
			log.Warn().Err(err).Msg("not following the host's address changes: a removed address leaves rotation when a bind fails, and an address added to the host is not refused as a destination")
		}
	}()
}

// buildState resolves cfg's users against p.
func buildState(cfg config.Config, p *pool.Pool) (*auth.State, error) {
	st := &auth.State{Pool: p}
	if len(cfg.Users) > 0 {
		users, err := auth.Build(cfg.Users, p, cfg.PoolTags)
		if err != nil {
			return nil, fmt.Errorf("users file %s: %w", cfg.UsersFile, err)
		}
		st.Users = users
	}
	return st, nil
}

// reload re-reads the pool file and the users file (flags and environment
// stay) and, once everything is built and checked, publishes the new pool
// and users in one atomic swap. On any error the old configuration stays
// and the error, naming the file and line, is returned. Requests and
// tunnels already running keep what they started with.
func (in *instance) reload() error {
	in.reloadMu.Lock()
	defer in.reloadMu.Unlock()
	cfg, err := config.Reload(in.cfg)
	if err != nil {
		return err
	}
	old := in.dialer.Pool()
	p, err := pool.Rebuild(old, cfg.Pool)
	if err != nil {
		return err
	}
	st, err := buildState(cfg, p)
	if err != nil {
		return err
	}
	if st.Users != nil {
		st.Users.Follows(in.access.Load().Users)
	}
	in.dialer.SetPool(p) // health checks and picks that name no pool
	in.access.Store(st)  // what every new request and connection loads
	in.cfg = cfg
	kept := map[*pool.Source]bool{}
	for _, s := range p.Sources() {
		kept[s] = true
	}
	var removed []*pool.Source
	for _, s := range old.Sources() {
		if !kept[s] {
			removed = append(removed, s)
		}
	}
	in.metrics.Prune(removed)
	if in.http != nil {
		for _, src := range removed {
			in.http.DropSource(src)
		}
	}
	users := 0
	if st.Users != nil {
		users = st.Users.Len()
	}
	in.log.Info().Strs("pool", labels(p)).Int("removed", len(removed)).Int("users", users).Msg("configuration reloaded")
	return nil
}

func labels(p *pool.Pool) []string {
	var s []string
	for _, src := range p.Sources() {
		s = append(s, src.Label)
	}
	return s
}

// ready is /readyz: serving, and at least one source in rotation.
func (in *instance) ready() error {
	if in.draining.Load() {
		return errors.New("shutting down")
	}
	for _, s := range in.dialer.Pool().Sources() {
		if !s.Down() {
			return nil
		}
	}
	return errors.New("every source address is down")
}

// hits is how often each timeout and limit was hit, both listeners added.
func (in *instance) hits() *serve.Hits { return serve.Sum(&in.httpHits, &in.socksHits) }

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
	in.draining.Store(true)
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
	in.stopHealth()
	if in.metricsSrv != nil {
		in.metricsSrv.Close()
	}
	in.wg.Wait()
	return errors.Join(errs...)
}

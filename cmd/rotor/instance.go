package main

import (
	"context"
	"crypto/tls"
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
	cfg       config.Config // as last loaded (reload replaces its pool and users)
	dialer    *pool.Dialer
	access    *auth.Live // users and pool, swapped whole by reload
	reloadMu  sync.Mutex
	log       zerolog.Logger
	http      *httpproxy.Server
	socks     *socks.Server
	https     *httpproxy.Server // the HTTP proxy inside TLS
	mixed     mixedPort
	certs     *serve.Certs // nil without --tls-cert
	httpAddr  net.Addr     // nil when disabled
	socksAddr net.Addr
	httpsAddr net.Addr
	mixedAddr net.Addr
	listeners []net.Listener
	httpHits  serve.Hits // timeouts and limits hit, by name
	socksHits serve.Hits
	httpsHits serve.Hits
	// listenerMet holds each listener's metrics by name.
	listenerMet map[string]*metrics.Listener
	metrics     *metrics.Metrics // nil without --metrics-listen
	metricsLn   net.Listener
	metricsSrv  *http.Server
	draining    atomic.Bool
	stopHealth  context.CancelFunc
	wg          sync.WaitGroup
	serveErr    chan error
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

// proxyListeners are the proxies' listeners; nil when disabled.
type proxyListeners struct{ http, socks, https, mixed net.Listener }

func (pl proxyListeners) all() []net.Listener {
	return []net.Listener{pl.http, pl.socks, pl.https, pl.mixed}
}

// start builds the pool (binding each address once to check it), opens
// the listeners and serves in the background. resolver nil means the
// system's.
func start(cfg config.Config, log zerolog.Logger, resolver *net.Resolver) (*instance, error) {
	p, err := pool.NewEntries(cfg.Pool, cfg.Upstreams, cfg.Strategy)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errConfig, err)
	}
	p.SetRate(cfg.PerIPRate, cfg.PerIPBurst)
	st, err := buildState(cfg, p)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errConfig, err)
	}
	in := &instance{cfg: cfg, log: log, access: auth.NewLive(st, cfg.AllowClients), serveErr: make(chan error, 6)}
	if cfg.TLSCert != "" {
		tc, err := serve.LoadTLS(cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errConfig, err)
		}
		in.certs = &serve.Certs{}
		in.certs.Store(tc)
	}
	pl, err := in.listen()
	if err != nil {
		return nil, err
	}
	d, err := in.newDialer(p, resolver, pl.all()...)
	if err != nil {
		closeListeners(append(pl.all(), in.metricsLn)...)
		return nil, err
	}
	in.serveProxies(d, pl)
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

// listen opens the metrics listener (in.metricsLn) and the proxies'; on
// error none stays open.
func (in *instance) listen() (pl proxyListeners, err error) {
	cfg := in.cfg
	if cfg.MetricsListen != "" {
		if in.metricsLn, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			return pl, listenError("metrics", cfg.MetricsListen, err)
		}
	}
	// No TCP keepalive probes on client connections: four setsockopt calls
	// per accept, and tunnels are bounded by --idle-timeout instead.
	lc := net.ListenConfig{KeepAlive: -1}
	for _, l := range []struct {
		what, addr string
		ln         *net.Listener
	}{
		{"HTTP", cfg.HTTPListen, &pl.http}, {"SOCKS5", cfg.SOCKSListen, &pl.socks},
		{"HTTPS", cfg.HTTPSListen, &pl.https}, {"mixed", cfg.MixedListen, &pl.mixed},
	} {
		if l.addr == "" {
			continue
		}
		if *l.ln, err = lc.Listen(context.Background(), "tcp", l.addr); err != nil {
			closeListeners(append(pl.all(), in.metricsLn)...)
			return proxyListeners{}, listenError(l.what, l.addr, err)
		}
	}
	return pl, nil
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
		UpstreamFall: cfg.HealthFall,
		Policy:       policy,
		OnChange: func(src *pool.Source, up bool, err error) {
			if up {
				log.Info().Str("src", src.Label).Msg("source address back in rotation")
				return
			}
			log.Warn().Str("src", src.Label).Err(err).Msg("source address out of rotation")
			for _, h := range in.httpServers() {
				h.DropSource(src)
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

// mixedPort is the one port (--listen) serving every protocol: the Mux
// reads each connection's first bytes and hands it to its own HTTP or
// SOCKS5 server, which log and count under listener "mixed".
type mixedPort struct {
	mux   *serve.Mux
	http  *httpproxy.Server
	socks *socks.Server
	hits  serve.Hits
}

func (m *mixedPort) active() int { return m.mux.Conns.Len() + m.http.Active() + m.socks.Active() }

// serveProxies starts the proxy servers on their listeners (any may be
// nil), sharing one connection limit.
func (in *instance) serveProxies(d *pool.Dialer, pl proxyListeners) {
	cfg := in.cfg
	limit := serve.NewLimiter(cfg.MaxConns, in.log)
	var tlsConf *tls.Config
	if in.certs != nil {
		tlsConf = in.certs.Config()
	}
	if pl.http != nil {
		ln := in.accept(pl.http)
		in.httpAddr = ln.Addr()
		in.http = in.newHTTP(d, limit, "http", &in.httpHits, func() int { return in.http.Active() }, nil)
		in.serve(func() error { return in.http.Serve(ln) })
	}
	if pl.https != nil {
		ln := in.accept(pl.https)
		in.httpsAddr = ln.Addr()
		in.https = in.newHTTP(d, limit, "https", &in.httpsHits, func() int { return in.https.Active() }, tlsConf)
		in.serve(func() error { return in.https.Serve(ln) })
	}
	if pl.socks != nil {
		ln := in.accept(pl.socks)
		in.socksAddr = ln.Addr()
		in.socks = in.newSOCKS(d, limit, "socks5", &in.socksHits, func() int { return in.socks.Active() })
		in.serve(func() error { return in.socks.Serve(ln) })
	}
	if pl.mixed != nil {
		m := &in.mixed
		ln := in.accept(pl.mixed)
		in.mixedAddr = ln.Addr()
		m.http = in.newHTTP(d, limit, "mixed", &m.hits, m.active, tlsConf)
		m.socks = in.newSOCKS(d, limit, "mixed", &m.hits, m.active)
		m.mux = &serve.Mux{Timeout: cfg.HandshakeTimeout, Log: in.log.With().Str("listener", "mixed").Logger(), Hits: &m.hits,
			HTTP: m.http.HandleHTTP, SOCKS5: m.socks.Handle}
		if tlsConf != nil {
			m.mux.TLS = m.http.HandleTLS
		}
		m.mux.Init(nil, &m.hits)
		m.mux.Proxy = in.proxyProto()
		in.serve(func() error { return m.mux.Serve(ln) })
	}
}

// proxyProto is the PROXY protocol reader of every listener; nil without
// --proxy-protocol-from. On the mixed port the Mux reads the header; the
// servers it hands connections to do not accept, so read none again.
func (in *instance) proxyProto() *serve.ProxyProto {
	if len(in.cfg.ProxyProtocolFrom) == 0 {
		return nil
	}
	return &serve.ProxyProto{From: in.cfg.ProxyProtocolFrom, Timeout: in.cfg.HandshakeTimeout}
}

// accept readies ln to be served, returning what to serve: rotor closes
// it itself on shutdown.
func (in *instance) accept(ln net.Listener) net.Listener {
	l := &onceCloseListener{Listener: ln}
	in.listeners = append(in.listeners, l)
	return l
}

// newHTTP is an HTTP proxy server for the listener called name; TLS
// (nil: none) serves it inside TLS. The mixed port's servers share its
// metrics: active counts all of them.
func (in *instance) newHTTP(d *pool.Dialer, limit *serve.Limiter, name string, hits *serve.Hits, active func() int, tlsConf *tls.Config) *httpproxy.Server {
	cfg := in.cfg
	return httpproxy.New(httpproxy.Options{
		Dialer: d, Access: in.access, HeaderTimeout: cfg.HeaderTimeout, TunnelIdleTimeout: cfg.IdleTimeout,
		IdleTimeout: cfg.KeepAliveTimeout, Limiter: limit, MaxHeaderBytes: cfg.MaxHeaderBytes, Hits: hits,
		TLS: tlsConf, HandshakeTimeout: cfg.HandshakeTimeout, ProxyProtocol: in.proxyProto(),
		Log: in.log.With().Str("listener", name).Logger(), Metrics: in.metrics,
		Listener: in.listenerMetrics(name, active, hits),
	})
}

// newSOCKS is a SOCKS5 server for the listener called name.
func (in *instance) newSOCKS(d *pool.Dialer, limit *serve.Limiter, name string, hits *serve.Hits, active func() int) *socks.Server {
	cfg := in.cfg
	return socks.New(socks.Options{
		Dialer: d, Access: in.access, HandshakeTimeout: cfg.HandshakeTimeout, IdleTimeout: cfg.IdleTimeout, UDPIdleTimeout: cfg.UDPIdleTimeout,
		Limiter: limit, Hits: hits, ProxyProtocol: in.proxyProto(),
		Log: in.log.With().Str("listener", name).Logger(), Metrics: in.metrics,
		Listener: in.listenerMetrics(name, active, hits),
	})
}

// listenerMetrics registers a listener's metrics once per name: the mixed
// port's two servers share one.
func (in *instance) listenerMetrics(name string, active func() int, hits *serve.Hits) *metrics.Listener {
	if l, ok := in.listenerMet[name]; ok {
		return l
	}
	l := in.metrics.AddListener(name, active, hits)
	if in.listenerMet == nil {
		in.listenerMet = map[string]*metrics.Listener{}
	}
	in.listenerMet[name] = l
	return l
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
	p, err := pool.Rebuild(old, cfg.Pool, cfg.Upstreams)
	if err != nil {
		return err
	}
	st, err := buildState(cfg, p)
	if err != nil {
		return err
	}
	var tlsConf *tls.Config
	if in.certs != nil {
		// A pair that does not load keeps the old one, and the rest of
		// the old configuration with it.
		if tlsConf, err = serve.LoadTLS(cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA); err != nil {
			return err
		}
	}
	if st.Users != nil {
		st.Users.Follows(in.access.Load().Users)
	}
	if tlsConf != nil {
		in.certs.Store(tlsConf) // new handshakes present it; live connections keep theirs
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
	for _, h := range in.httpServers() {
		for _, src := range removed {
			h.DropSource(src)
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

// hits is how often each timeout and limit was hit, every listener added.
func (in *instance) hits() *serve.Hits {
	return serve.Sum(&in.httpHits, &in.socksHits, &in.httpsHits, &in.mixed.hits)
}

// httpServers are the HTTP proxy servers running, whose idle upstream
// connections follow the pool.
func (in *instance) httpServers() []*httpproxy.Server {
	var hs []*httpproxy.Server
	for _, h := range []*httpproxy.Server{in.http, in.https, in.mixed.http} {
		if h != nil {
			hs = append(hs, h)
		}
	}
	return hs
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
	in.draining.Store(true)
	for _, l := range in.listeners {
		l.Close()
	}
}

// shutdown stops every listener at once and drains every server in
// parallel until ctx ends; then whatever is left is closed.
func (in *instance) shutdown(ctx context.Context) error {
	in.stopAccepting()
	var servers []interface{ Shutdown(context.Context) error }
	for _, h := range in.httpServers() {
		servers = append(servers, h)
	}
	if in.socks != nil {
		servers = append(servers, in.socks)
	}
	if in.mixed.mux != nil {
		servers = append(servers, in.mixed.socks, in.mixed.mux)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(servers))
	for i, srv := range servers {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = srv.Shutdown(ctx) }()
	}
	wg.Wait()
	in.stopHealth()
	if in.metricsSrv != nil {
		in.metricsSrv.Close()
	}
	in.wg.Wait()
	return errors.Join(errs...)
}

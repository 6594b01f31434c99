package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
)

// sourceState reports each source's rotation state when scraped, from the
// atomics the pool already keeps: nothing on the request path.
type sourceState struct{ current func() *pool.Pool }

var (
	upDesc = prometheus.NewDesc("rotor_source_up",
		"1 while the source address is in rotation, 0 while health checking keeps it out.", []string{"source"}, nil)
	changeDesc = prometheus.NewDesc("rotor_source_last_change_timestamp_seconds",
		"Unix time the source address last went out of or back into rotation; 0 if it never has.", []string{"source"}, nil)
)

func (c *sourceState) Describe(ch chan<- *prometheus.Desc) {
	ch <- upDesc
	ch <- changeDesc
}

func (c *sourceState) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.current().Sources() {
		up := 1.0
		if s.Down() {
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, up, s.Label)
		var at float64
		if t := s.Changed(); !t.IsZero() {
			at = float64(t.UnixNano()) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(changeDesc, prometheus.GaugeValue, at, s.Label)
	}
}

// Listener is one listener's metrics.
type Listener struct {
	name         string
	active       func() int
	hits         *serve.Hits
	authFailures prometheus.Counter
	tlsFailures  prometheus.Counter
}

// AuthFailed counts a client refused for its credentials.
func (l *Listener) AuthFailed() {
	if l != nil {
		l.authFailures.Inc()
	}
}

// TLSHandshakeFailed counts a client whose TLS handshake failed (plain
// HTTP, an unknown certificate, no client certificate, a timeout).
func (l *Listener) TLSHandshakeFailed() {
	if l != nil {
		l.tlsFailures.Inc()
	}
}

// listeners reports every listener's numbers when scraped.
type listeners struct {
	mu   sync.Mutex
	list []*Listener
	auth *prometheus.CounterVec
	tls  *prometheus.CounterVec
}

var (
	activeDesc = prometheus.NewDesc("rotor_listener_active_connections",
		"Client connections open on the listener now, tunnels included.", []string{"listener"}, nil)
	timeoutDesc = prometheus.NewDesc("rotor_listener_timeouts_total",
		"Timeouts hit, by the flag that sets them (header-timeout, dial-timeout, idle-timeout...).", []string{"listener", "timeout"}, nil)
	limitDesc = prometheus.NewDesc("rotor_listener_limit_hits_total",
		"Limits hit, by the flag or setting that sets them (max-conns, max-header-bytes, per-ip-rate, user-max-conns, user-rate, auth-backoff).", []string{"listener", "limit"}, nil)
)

func (ls *listeners) add(l *Listener) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l.authFailures = ls.auth.WithLabelValues(l.name)
	l.tlsFailures = ls.tls.WithLabelValues(l.name)
	ls.list = append(ls.list, l)
}

func (ls *listeners) Describe(ch chan<- *prometheus.Desc) {
	ch <- activeDesc
	ch <- timeoutDesc
	ch <- limitDesc
	ls.auth.Describe(ch)
	ls.tls.Describe(ch)
}

func newListeners() *listeners {
	return &listeners{auth: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rotor_listener_auth_failures_total",
		Help: "Clients refused for missing or wrong credentials (HTTP 407, SOCKS5 auth failure).",
	}, []string{"listener"}), tls: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rotor_listener_tls_handshake_failures_total",
		Help: "Client TLS handshakes that failed (plain HTTP to a TLS listener, a refused or missing client certificate, a timeout).",
	}, []string{"listener"})}
}

func (ls *listeners) Collect(ch chan<- prometheus.Metric) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, l := range ls.list {
		ch <- prometheus.MustNewConstMetric(activeDesc, prometheus.GaugeValue, float64(l.active()), l.name)
		l.hits.Each(func(h serve.Hit, n int64) {
			d := limitDesc
			if h.IsTimeout() {
				d = timeoutDesc
			}
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), l.name, h.String())
		})
	}
	ls.auth.Collect(ch)
	ls.tls.Collect(ch)
}

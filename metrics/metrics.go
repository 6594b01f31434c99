// Package metrics exports rotor's per-source-address and per-listener
// numbers to Prometheus (prometheus/client_golang). In the path of one
// CONNECT or SOCKS5 request it counts the dial (pool's OnDial hook), the
// request's result by source, and the bytes as the tunnel moves them.
//
// Every label value is bounded: a source address as configured, a
// protocol, a result class, a listener, a timeout or limit name. Target
// hosts and user names never become labels.
//
// The hot path pays a few atomic adds: each source's label children are
// resolved once, in New, into arrays indexed by protocol and result, so a
// request indexes an array instead of hashing label values. What can be
// read when Prometheus scrapes (up/down state, active connections, timeout
// and limit counts) is read then, and costs requests nothing. A nil
// *Metrics or *Source is valid and counts nothing.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
	"github.com/rotor-proxy/rotor/tunnel"
)

// Proto is what a request came in as.
type Proto uint8

const (
	HTTP    Proto = iota // absolute-form request forwarded
	Connect              // HTTP CONNECT tunnel
	SOCKS5               // SOCKS5 CONNECT
	numProtos
)

var protoNames = [numProtos]string{"http", "connect", "socks5"}

// Results are "ok" and then the pool.Class names of failures.
const numResults = 1 + pool.NumClasses

func resultName(i int) string {
	if i == 0 {
		return "ok"
	}
	return pool.Class(i - 1).String()
}

func resultOf(err error) int {
	if err == nil {
		return 0
	}
	return 1 + int(pool.Classify(err))
}

// Metrics is rotor's registry and the per-source counters behind it.
type Metrics struct {
	reg     *prometheus.Registry
	sources *pool.Table[Source]
	vecs    []deleter // per-source families, for Prune
	lis     *listeners
}

// deleter is a metric vector whose series can be dropped by label.
type deleter interface {
	DeletePartialMatch(prometheus.Labels) int
}

// Source holds one source address's counters.
type Source struct {
	requests [numProtos][numResults]prometheus.Counter
	dials    [numResults]prometheus.Counter
	dialTime prometheus.Observer
	sent     prometheus.Counter
	received prometheus.Counter
	tunnels  prometheus.Gauge
	probes   [2]prometheus.Counter // passed, failed
	udp      udpSource
}

// udpSource is a source's SOCKS5 UDP ASSOCIATE counters.
type udpSource struct {
	active    prometheus.Gauge
	total     prometheus.Counter
	datagrams [2]prometheus.Counter // sent, received
	bytes     [2]prometheus.Counter
	drops     [numDrops]prometheus.Counter
}

// Drop is why a datagram of a UDP association was not relayed.
type Drop uint8

const (
	DropForeign    Drop = iota // from an address other than the association's client
	DropFragmented             // FRAG not 0: reassembly is not offered
	DropMalformed              // header does not parse
	DropTooLarge               // over the datagram size cap
	DropForbidden              // destination refused by the policy
	DropUnresolved             // name does not resolve in the source's family
	DropFamily                 // destination of the other family than the source
	DropSend                   // the send itself failed
	numDrops
)

var dropNames = [numDrops]string{"foreign-client", "fragmented", "malformed", "too-large", "forbidden", "unresolved", "family", "send-failed"}

func (d Drop) String() string { return dropNames[d] }

// DialBuckets are the dial latency histogram's upper bounds in seconds:
// loopback and LAN targets take well under a millisecond, far ones tens
// to hundreds, and the dial timeout defaults to 10 s.
var DialBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// New builds the registry for the sources of the pool current() returns
// (the dialer's, which a reload replaces). version goes into
// rotor_build_info.
func New(current func() *pool.Pool, version string) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{reg: reg, lis: newListeners()}

	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rotor_source_requests_total",
		Help: "Requests (protocol http), CONNECT tunnels (connect) and SOCKS5 connections (socks5) sent from a source address, by result: ok, or the class of the failure.",
	}, []string{"source", "protocol", "result"})
	dials := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rotor_source_dials_total",
		Help: "Outbound TCP connects from a source address, by result. Keep-alive forwarding reuses connections, so there can be fewer dials than requests.",
	}, []string{"source", "result"})
	dialTime := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "rotor_source_dial_duration_seconds",
		Help:    "Time to connect (TCP handshake, after name resolution) from a source address, successful dials only.",
		Buckets: DialBuckets,
	}, []string{"source"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rotor_source_bytes_total",
		Help: "Payload bytes through a source address: sent to targets, or received from them. Tunnels report at least every 250 ms.",
	}, []string{"source", "direction"})
	tunnels := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "rotor_source_active_tunnels",
		Help: "CONNECT and SOCKS5 tunnels open from a source address now.",
	}, []string{"source"})
	probes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rotor_source_health_probes_total",
		Help: "Active health probes (--health-target) from a source address, by result: pass or fail.",
	}, []string{"source", "result"})
	udpActive := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "rotor_source_udp_associations_active",
		Help: "SOCKS5 UDP associations open from a source address now.",
	}, []string{"source"})
	udpTotal := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rotor_source_udp_associations_total",
		Help: "SOCKS5 UDP associations opened from a source address.",
	}, []string{"source"})
	udpDatagrams := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rotor_source_udp_datagrams_total",
		Help: "UDP datagrams relayed through a source address: sent to destinations, or received from them.",
	}, []string{"source", "direction"})
	udpBytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rotor_source_udp_bytes_total",
		Help: "UDP payload bytes relayed through a source address, by direction.",
	}, []string{"source", "direction"})
	udpDrops := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rotor_source_udp_drops_total",
		Help: "UDP datagrams of associations on a source address that were not relayed, by reason.",
	}, []string{"source", "reason"})
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "rotor_build_info",
		Help: "Always 1; the version label says which rotor is running.",
	}, []string{"version"})
	build.WithLabelValues(version).Set(1)
	reg.MustRegister(requests, dials, dialTime, bytes, tunnels, probes, udpActive, udpTotal, udpDatagrams, udpBytes, udpDrops,
		build, &sourceState{current: current}, m.lis)
	m.vecs = []deleter{requests, dials, dialTime, bytes, tunnels, probes, udpActive, udpTotal, udpDatagrams, udpBytes, udpDrops}

	// Children are resolved once per source: here for the sources there
	// are, on first use for a source a reload adds.
	m.sources = pool.NewTable(current(), func(src *pool.Source) *Source {
		s := &Source{
			dialTime: dialTime.WithLabelValues(src.Label),
			sent:     bytes.WithLabelValues(src.Label, "sent"),
			received: bytes.WithLabelValues(src.Label, "received"),
			tunnels:  tunnels.WithLabelValues(src.Label),
			probes:   [2]prometheus.Counter{probes.WithLabelValues(src.Label, "pass"), probes.WithLabelValues(src.Label, "fail")},
		}
		s.udp = udpSource{
			active:    udpActive.WithLabelValues(src.Label),
			total:     udpTotal.WithLabelValues(src.Label),
			datagrams: [2]prometheus.Counter{udpDatagrams.WithLabelValues(src.Label, "sent"), udpDatagrams.WithLabelValues(src.Label, "received")},
			bytes:     [2]prometheus.Counter{udpBytes.WithLabelValues(src.Label, "sent"), udpBytes.WithLabelValues(src.Label, "received")},
		}
		for d := Drop(0); d < numDrops; d++ {
			s.udp.drops[d] = udpDrops.WithLabelValues(src.Label, d.String())
		}
		for r := 0; r < numResults; r++ {
			s.dials[r] = dials.WithLabelValues(src.Label, resultName(r))
			for pr := Proto(0); pr < numProtos; pr++ {
				s.requests[pr][r] = requests.WithLabelValues(src.Label, protoNames[pr], resultName(r))
			}
		}
		return s
	})
	return m
}

// Prune drops the series of sources a reload removed from the pool, so
// that label values stay those of the pool.
func (m *Metrics) Prune(removed []*pool.Source) {
	if m == nil {
		return
	}
	for _, src := range removed {
		for _, v := range m.vecs {
			v.DeletePartialMatch(prometheus.Labels{"source": src.Label})
		}
	}
}

// Source returns src's counters; nil when m or src is nil.
func (m *Metrics) Source(src *pool.Source) *Source {
	if m == nil || src == nil {
		return nil
	}
	return m.sources.Get(src)
}

// Request counts one request, tunnel or SOCKS5 connection and its result
// (err nil: ok).
func (s *Source) Request(p Proto, err error) {
	if s != nil {
		s.requests[p][resultOf(err)].Inc()
	}
}

// Bytes counts payload forwarded outside a tunnel (HTTP forwarding).
func (s *Source) Bytes(sent, received int64) {
	if s == nil {
		return
	}
	if sent > 0 {
		s.sent.Add(float64(sent))
	}
	if received > 0 {
		s.received.Add(float64(received))
	}
}

// TunnelCount returns the counters a tunnel reports its bytes to, client
// to target first (see tunnel.Options.Count).
func (s *Source) TunnelCount() [2]tunnel.Adder {
	if s == nil {
		return [2]tunnel.Adder{}
	}
	return [2]tunnel.Adder{s.sent, s.received}
}

// TunnelOpened and TunnelClosed keep rotor_source_active_tunnels.
func (s *Source) TunnelOpened() {
	if s != nil {
		s.tunnels.Inc()
	}
}

func (s *Source) TunnelClosed() {
	if s != nil {
		s.tunnels.Dec()
	}
}

// UDPOpened and UDPClosed keep the association counters of the source.
func (s *Source) UDPOpened() {
	if s != nil {
		s.udp.active.Inc()
		s.udp.total.Inc()
	}
}

func (s *Source) UDPClosed() {
	if s != nil {
		s.udp.active.Dec()
	}
}

// UDPSent counts a datagram of n payload bytes sent to a destination;
// UDPReceived one received from a destination.
func (s *Source) UDPSent(n int) {
	if s != nil {
		s.udp.datagrams[0].Inc()
		s.udp.bytes[0].Add(float64(n))
	}
}

func (s *Source) UDPReceived(n int) {
	if s != nil {
		s.udp.datagrams[1].Inc()
		s.udp.bytes[1].Add(float64(n))
	}
}

// UDPDropped counts a datagram not relayed, by reason.
func (s *Source) UDPDropped(d Drop) {
	if s != nil {
		s.udp.drops[d].Inc()
	}
}

// Dialed is the pool.DialerOptions.OnDial hook.
func (m *Metrics) Dialed(src *pool.Source, took time.Duration, err error) {
	s := m.Source(src)
	if s == nil {
		return
	}
	s.dials[resultOf(err)].Inc()
	if err == nil {
		s.dialTime.Observe(took.Seconds())
	}
}

// Probed is the health.Options.OnProbe hook.
func (m *Metrics) Probed(src *pool.Source, err error) {
	s := m.Source(src)
	if s == nil {
		return
	}
	if err == nil {
		s.probes[0].Inc()
	} else {
		s.probes[1].Inc()
	}
}

// AddListener exports a listener's active connections (read from active
// at scrape time), its timeout and limit hits, and returns its auth
// failure counter.
func (m *Metrics) AddListener(name string, active func() int, hits *serve.Hits) *Listener {
	if m == nil {
		return nil
	}
	l := &Listener{name: name, active: active, hits: hits}
	m.lis.add(l)
	return l
}

// Handler serves /metrics, /healthz (200 while the process runs) and
// /readyz (200 while ready reports nil; 503 with its reason otherwise).
func (m *Metrics) Handler(ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: nil}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Health defaults, documented in README.
const (
	DefaultHealthInterval = 30 * time.Second
	DefaultHealthFall     = 3
	DefaultHealthRise     = 2
)

// HealthOptions configure the health checker.
type HealthOptions struct {
	// Target is probed from every source each interval: "host:port" (a TCP
	// connect must succeed) or an http:// or https:// URL (a GET must
	// answer with a status below 500). Empty means no active probes: down
	// sources are only re-checked by binding their address.
	Target string
	// Interval between rounds; zero means DefaultHealthInterval.
	Interval time.Duration
	// Timeout bounds one probe; zero means the smaller of Interval and
	// 10 seconds.
	Timeout time.Duration
	// Fall consecutive target-side failures take a source out of rotation;
	// a local failure (the address cannot be bound) takes it out at once.
	Fall int
	// Rise consecutive successes bring a down source back.
	Rise int
	// OnProbe, when set, is told each probe's outcome.
	OnProbe func(src *Source, err error)
	// OnAllDown, when set, is called once per round while every source is
	// down (picks then rotate through all of them anyway).
	OnAllDown func()
}

// ParseHealthTarget checks a --health-target value: host:port, or an
// http(s) URL with a host.
func ParseHealthTarget(s string) error {
	if strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") {
		u, err := url.Parse(s)
		if err != nil {
			return fmt.Errorf("health target %q: %w", s, err)
		}
		if u.Host == "" {
			return fmt.Errorf("health target %q: URL has no host", s)
		}
		return nil
	}
	if _, _, err := splitTarget(s); err != nil {
		return fmt.Errorf("health target %q: want host:port or an http(s) URL: %w", s, err)
	}
	return nil
}

// Health probes the pool's sources and moves them out of and back into
// rotation. Run it on its own goroutine; it ends with its context.
func (d *Dialer) Health(ctx context.Context, o HealthOptions) {
	if o.Interval <= 0 {
		o.Interval = DefaultHealthInterval
	}
	if o.Timeout <= 0 {
		o.Timeout = min(o.Interval, 10*time.Second)
	}
	if o.Fall <= 0 {
		o.Fall = DefaultHealthFall
	}
	if o.Rise <= 0 {
		o.Rise = DefaultHealthRise
	}
	h := &health{d: d, o: o, state: map[*Source]*probeState{}}
	// Probes connect to an operator-chosen target, which may well be on a
	// private network: the destination policy is for clients' requests.
	// Probes dial from a given source, never picking: the probe dialer
	// shares only the timeouts and resolver.
	h.probe = NewDialer(d.Pool(), DialerOptions{Timeout: d.timeout, DNSTimeout: d.dnsTimeout, Resolver: d.resolver})
	if strings.HasPrefix(o.Target, "http://") || strings.HasPrefix(o.Target, "https://") {
		h.useHTTP = true
	}
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h.round(ctx)
		}
	}
}

type health struct {
	d       *Dialer
	probe   *Dialer // d without policy or hooks
	o       HealthOptions
	useHTTP bool
	// state is by source, kept across rounds for the sources of the
	// current pool; only the round's goroutine for a source touches its
	// entry.
	state map[*Source]*probeState
}

type probeState struct {
	fails, oks int
}

// probeParallel bounds the probes in flight, so a large pool does not
// open hundreds of sockets at once.
const probeParallel = 32

func (h *health) round(ctx context.Context) {
	p := h.d.Pool() // a reload may have replaced it since the last round
	state := make(map[*Source]*probeState, len(p.sources))
	for _, src := range p.sources {
		st := h.state[src]
		if st == nil {
			st = &probeState{}
		}
		state[src] = st
	}
	h.state = state
	var wg sync.WaitGroup
	sem := make(chan struct{}, probeParallel)
	for _, src := range p.sources {
		if h.o.Target == "" && !src.Down() {
			continue
		}
		st := state[src]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			h.check(ctx, src, st)
		}()
	}
	wg.Wait()
	if ctx.Err() == nil && h.o.OnAllDown != nil && allDown(p) {
		h.o.OnAllDown()
	}
}

func allDown(p *Pool) bool {
	for _, s := range p.sources {
		if !s.Down() {
			return false
		}
	}
	return true
}

// check probes one source and applies the fall/rise thresholds.
func (h *health) check(ctx context.Context, src *Source, st *probeState) {
	var err error
	if h.o.Target == "" {
		// Passive mode: only the address itself is checked.
		err = checkSource(src)
		if err == nil {
			h.d.markUp(src)
		}
		return
	}
	ctx, cancel := context.WithTimeout(ctx, h.o.Timeout)
	defer cancel()
	err = h.probeOnce(ctx, src)
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return // shutting down
	}
	if h.o.OnProbe != nil {
		h.o.OnProbe(src, err)
	}
	if err == nil {
		st.fails = 0
		st.oks++
		if src.Down() && st.oks >= h.o.Rise {
			h.d.markUp(src)
		}
		return
	}
	st.oks = 0
	st.fails++
	if AddressGone(err) || st.fails >= h.o.Fall {
		h.d.MarkDown(src, fmt.Errorf("health probe %s: %w", h.o.Target, err))
	}
}

func (h *health) probeOnce(ctx context.Context, src *Source) error {
	if !h.useHTTP {
		host, port, err := splitTarget(h.o.Target)
		if err != nil {
			return err
		}
		c, err := h.probe.dial(ctx, src, src.Local(), host, port)
		if err != nil {
			return err
		}
		return c.Close()
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, port, err := splitTarget(addr)
			if err != nil {
				return nil, err
			}
			return h.probe.dial(ctx, src, src.Local(), host, port)
		},
		DisableKeepAlives: true,
		Proxy:             nil,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.o.Target, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "rotor-health")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return fmt.Errorf("%w: status %d", ErrUnhealthy, resp.StatusCode)
	}
	return nil
}

// ErrUnhealthy is a health probe that reached the target and got an
// answer saying "not healthy" (HTTP 5xx).
var ErrUnhealthy = errors.New("health target answered unhealthy")

// Package health probes the pool's sources and moves them out of rotation
// and back: actively, by connecting to (or GETting) a target from every
// source each interval with fall/rise thresholds, and passively, by
// re-binding the address of a source that left rotation. It changes a
// source's state only through the dialer (MarkDown, MarkUp), so the
// dialer's OnChange hook hears every change whoever made it.
package health

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

	"github.com/rotor-proxy/rotor/pool"
)

// Defaults, documented in README.
const (
	DefaultInterval = 30 * time.Second
	DefaultFall     = 3
	DefaultRise     = 2
)

// Options configure the health checker.
type Options struct {
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
	OnProbe func(src *pool.Source, err error)
	// OnAllDown, when set, is called once per round while every source is
	// down (picks then rotate through all of them anyway).
	OnAllDown func()
}

// ParseTarget checks a --health-target value: host:port, or an http(s)
// URL with a host.
func ParseTarget(s string) error {
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
	if _, _, err := pool.SplitTarget(s); err != nil {
		return fmt.Errorf("health target %q: want host:port or an http(s) URL: %w", s, err)
	}
	return nil
}

// Run probes the pool's sources of d and moves them out of and back into
// rotation. Run it on its own goroutine; it ends with its context.
func Run(ctx context.Context, d *pool.Dialer, o Options) {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Timeout <= 0 {
		o.Timeout = min(o.Interval, 10*time.Second)
	}
	if o.Fall <= 0 {
		o.Fall = DefaultFall
	}
	if o.Rise <= 0 {
		o.Rise = DefaultRise
	}
	h := &health{d: d, o: o, state: map[*pool.Source]*probeState{}}
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
	d       *pool.Dialer
	o       Options
	useHTTP bool
	// state is by source, kept across rounds for the sources of the
	// current pool; only the round's goroutine for a source touches its
	// entry.
	state map[*pool.Source]*probeState
}

type probeState struct {
	fails, oks int
}

// probeParallel bounds the probes in flight, so a large pool does not
// open hundreds of sockets at once.
const probeParallel = 32

func (h *health) round(ctx context.Context) {
	p := h.d.Pool() // a reload may have replaced it since the last round
	sources := p.Sources()
	state := make(map[*pool.Source]*probeState, len(sources))
	for _, src := range sources {
		st := h.state[src]
		if st == nil {
			st = &probeState{}
		}
		state[src] = st
	}
	h.state = state
	var wg sync.WaitGroup
	sem := make(chan struct{}, probeParallel)
	for _, src := range sources {
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

func allDown(p *pool.Pool) bool {
	for _, s := range p.Sources() {
		if !s.Down() {
			return false
		}
	}
	return true
}

// check probes one source and applies the fall/rise thresholds.
func (h *health) check(ctx context.Context, src *pool.Source, st *probeState) {
	if h.o.Target == "" {
		// Passive mode: only the address itself is checked.
		if src.Check() == nil {
			h.d.MarkUp(src)
		}
		return
	}
	ctx, cancel := context.WithTimeout(ctx, h.o.Timeout)
	defer cancel()
	err := h.probeOnce(ctx, src)
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
			h.d.MarkUp(src)
		}
		return
	}
	st.oks = 0
	st.fails++
	if pool.AddressGone(err) || st.fails >= h.o.Fall {
		h.d.MarkDown(src, fmt.Errorf("health probe %s: %w", h.o.Target, err))
	}
}

// probeOnce connects to the target from src, or GETs it. Probes connect
// to an operator-chosen target, which may well be on a private network,
// from a given source, never choosing: Dialer.Probe skips the destination
// policy, which is for clients' requests, and the dial metrics.
func (h *health) probeOnce(ctx context.Context, src *pool.Source) error {
	e := pool.Egress{Src: src, Local: src.Local()}
	if !h.useHTTP {
		host, port, err := pool.SplitTarget(h.o.Target)
		if err != nil {
			return err
		}
		c, err := h.d.Probe(ctx, e, host, port)
		if err != nil {
			return err
		}
		return c.Close()
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, port, err := pool.SplitTarget(addr)
			if err != nil {
				return nil, err
			}
			return h.d.Probe(ctx, e, host, port)
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

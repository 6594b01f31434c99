package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/pool"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// loopbackPool is a pool of 127.0.0.2-127.0.0.5.
func loopbackPool(t *testing.T, s pool.Strategy) *pool.Pool {
	t.Helper()
	var entries []netip.Prefix
	for _, a := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"} {
		entries = append(entries, pool.Single(netip.MustParseAddr(a)))
	}
	p, err := pool.NewEntries(entries, nil, s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// closingListener accepts on 127.0.0.1 and closes every connection at
// once: a target for probes that need only connect.
func closingListener(t *testing.T) string {
	t.Helper()
	s, err := target.TCP("127.0.0.1:0", func(*net.TCPConn) {})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s.Addr
}

// A source that could not be bound leaves rotation at once; with no
// health target, the checker brings it back as soon as its address can be
// bound again.
func TestDownSourceLeavesRotation(t *testing.T) {
	for _, st := range []pool.Strategy{pool.RoundRobin, pool.Random, pool.LeastRecent} {
		p := loopbackPool(t, st)
		down := p.Sources()[1]
		changes := make(chan bool, 4)
		var seenDown error
		d := pool.NewDialer(p, pool.DialerOptions{OnChange: func(_ *pool.Source, up bool, err error) {
			if !up {
				seenDown = err
			}
			changes <- up
		}})
		d.MarkDown(down, syscall.EADDRNOTAVAIL)
		if !errors.Is(seenDown, syscall.EADDRNOTAVAIL) || !down.Down() || <-changes {
			t.Fatalf("%s: MarkDown did not take the source out", st)
		}
		if down.Changed().IsZero() {
			t.Fatalf("%s: no change time recorded", st)
		}
		for i := 0; i < 100; i++ {
			if s, _ := p.Pick(pool.IPv4); s == down {
				t.Fatalf("%s: picked a source that is down", st)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); Run(ctx, d, Options{Interval: 20 * time.Millisecond}) }()
		select {
		case up := <-changes:
			if !up || down.Down() {
				t.Fatalf("%s: want the source back up", st)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: source still down after 5 s of 20 ms health rounds", st)
		}
		cancel()
		<-done
	}
}

// probeTarget answers 503 to probes from the addresses in bad, 204 to the
// others.
type probeTarget struct {
	mu  sync.Mutex
	bad map[string]bool
	n   map[string]int
	srv *http.Server
	url string
}

func newProbeTarget(t *testing.T) *probeTarget {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pt := &probeTarget{bad: map[string]bool{}, n: map[string]int{}, url: "http://" + ln.Addr().String() + "/health"}
	pt.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		pt.mu.Lock()
		bad := pt.bad[ip]
		pt.n[ip]++
		pt.mu.Unlock()
		if bad {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	go pt.srv.Serve(ln)
	t.Cleanup(func() { pt.srv.Close() })
	return pt
}

func (pt *probeTarget) setBad(ip string, bad bool) {
	pt.mu.Lock()
	pt.bad[ip] = bad
	pt.mu.Unlock()
}

func (pt *probeTarget) count(ip string) int {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return pt.n[ip]
}

// probeTimeout is far above the tests' intervals: a probe that passes
// must never time out on a loaded CI machine (a 20 ms bound did, once).
const probeTimeout = 10 * time.Second

// Fall consecutive failed probes take a source out; Rise successes bring
// it back; the other sources are never touched.
func TestActiveHealthFallRise(t *testing.T) {
	for _, target := range []string{"url", "tcp"} {
		p := loopbackPool(t, pool.RoundRobin)
		pt := newProbeTarget(t)
		type change struct {
			src string
			up  bool
		}
		changes := make(chan change, 16)
		d := pool.NewDialer(p, pool.DialerOptions{OnChange: func(s *pool.Source, up bool, _ error) { changes <- change{s.Addr.String(), up} }})
		probes := make(chan error, 1024)
		o := Options{Target: pt.url, Interval: 20 * time.Millisecond, Timeout: probeTimeout, Fall: 3, Rise: 2,
			OnProbe: func(s *pool.Source, err error) {
				if s.Addr.String() == "127.0.0.3" {
					probes <- err
				}
			}}
		if target == "tcp" {
			// A TCP target every source reaches: a connect is a pass.
			o.Target = closingListener(t)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); Run(ctx, d, o) }()

		if target == "url" {
			pt.setBad("127.0.0.3", true)
			// Exactly Fall failures before the change.
			for i := 0; i < 3; i++ {
				if err := <-probes; !errors.Is(err, ErrUnhealthy) {
					t.Fatalf("probe %d: %v, want ErrUnhealthy", i, err)
				}
			}
			c := <-changes
			if c.src != "127.0.0.3" || c.up || !p.Sources()[1].Down() {
				t.Fatalf("after 3 failures: %+v, want 127.0.0.3 down", c)
			}
			pt.setBad("127.0.0.3", false)
			for len(probes) > 0 {
				<-probes
			}
			c = <-changes
			if c.src != "127.0.0.3" || !c.up || p.Sources()[1].Down() {
				t.Fatalf("after recovery: %+v, want 127.0.0.3 up", c)
			}
			if n := pt.count("127.0.0.2"); n < 4 { // rounds run their probes concurrently: the 5th may be in flight
				t.Fatalf("127.0.0.2 probed %d times, want every round", n)
			}
		} else {
			// Every source reaches 127.0.0.1: nothing may change.
			for i := 0; i < 5; i++ {
				if err := <-probes; err != nil {
					t.Fatalf("tcp probe: %v", err)
				}
			}
		}
		cancel()
		<-done
		select {
		case c := <-changes:
			if target == "tcp" {
				t.Fatalf("tcp target: unexpected change %+v", c)
			}
		default:
		}
	}
}

// With every source down, each round reports it, and picks still work.
func TestHealthAllDown(t *testing.T) {
	p := loopbackPool(t, pool.RoundRobin)
	pt := newProbeTarget(t)
	for _, s := range p.Sources() {
		pt.setBad(s.Addr.String(), true)
	}
	d := pool.NewDialer(p, pool.DialerOptions{})
	alerts := make(chan struct{}, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, d, Options{Target: pt.url, Interval: 10 * time.Millisecond, Timeout: probeTimeout, Fall: 1, Rise: 1,
			OnAllDown: func() { alerts <- struct{}{} }})
	}()
	for i := 0; i < 3; i++ {
		select {
		case <-alerts:
		case <-time.After(5 * time.Second):
			t.Fatal("no all-down report")
		}
	}
	cancel()
	<-done
	if s, err := p.Pick(pool.IPv4); err != nil || s == nil {
		t.Fatalf("all down: %v, %v; want a source anyway", s, err)
	}
}

func TestParseTarget(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:80", "example.com:443", "http://example.com/h", "https://[::1]:8443/"} {
		if err := ParseTarget(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "example.com", "http://", "host:0", "ftp://x"} {
		if err := ParseTarget(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

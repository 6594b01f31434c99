package pool

import (
	"net/netip"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func addrs(t testing.TB, ss ...string) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func loopbackPool(t testing.TB, s Strategy) *Pool {
	t.Helper()
	p, err := New(addrs(t, "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"), s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRoundRobinStrictOrder(t *testing.T) {
	p := loopbackPool(t, RoundRobin)
	want := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}
	for i := 0; i < 12; i++ {
		// Address targets and name targets share one order in a
		// single-family pool.
		f := []Family{IPv4, Any}[i%2]
		s, err := p.Pick(f)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Addr.String(); got != want[i%4] {
			t.Fatalf("pick %d: got %s, want %s", i, got, want[i%4])
		}
	}
}

// Every strategy must spread concurrent picks; round-robin and
// least-recent exactly.
func TestConcurrentPicksBalanced(t *testing.T) {
	for _, st := range []Strategy{RoundRobin, LeastRecent, Random} {
		t.Run(string(st), func(t *testing.T) {
			p := loopbackPool(t, st)
			const workers, each = 16, 1000
			counts := make([][4]int, workers)
			var wg sync.WaitGroup
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < each; i++ {
						s, _ := p.Pick(Any)
						counts[w][s.Index]++
					}
				}()
			}
			wg.Wait()
			var total [4]int
			for _, c := range counts {
				for i, n := range c {
					total[i] += n
				}
			}
			for i, n := range total {
				switch st {
				case RoundRobin:
					if n != workers*each/4 {
						t.Errorf("address %d picked %d times, want exactly %d", i, n, workers*each/4)
					}
				case LeastRecent:
					// Concurrent CAS losers retry, so picks can differ by
					// at most the number of racing workers.
					if d := n - workers*each/4; d < -workers || d > workers {
						t.Errorf("address %d picked %d times, want %d±%d", i, n, workers*each/4, workers)
					}
				case Random:
					if n < 3500 || n > 4500 {
						t.Errorf("address %d picked %d times of 16000, want about 4000", i, n)
					}
				}
			}
		})
	}
}

func TestLeastRecentPicksIdlest(t *testing.T) {
	p := loopbackPool(t, LeastRecent)
	for i := 0; i < 4; i++ {
		p.Pick(Any)
	}
	// All used once in order .2 .3 .4 .5; the idlest is .2 again.
	s, _ := p.Pick(Any)
	if s.Addr.String() != "127.0.0.2" {
		t.Fatalf("got %s, want 127.0.0.2 (idle longest)", s.Addr)
	}
}

func TestMixedFamilies(t *testing.T) {
	p, err := New(addrs(t, "127.0.0.2", "::1", "127.0.0.3"), RoundRobin)
	if err != nil {
		t.Skipf("IPv6 loopback not available: %v", err)
	}
	for i := 0; i < 4; i++ {
		s, _ := p.Pick(IPv4)
		if !s.Addr.Is4() {
			t.Fatalf("IPv4 target got source %s", s.Addr)
		}
		s, _ = p.Pick(IPv6)
		if s.Addr != netip.MustParseAddr("::1") {
			t.Fatalf("IPv6 target got source %s", s.Addr)
		}
	}
	v4only := loopbackPool(t, RoundRobin)
	if _, err := v4only.Pick(IPv6); err == nil {
		t.Fatal("IPv6 target from an IPv4-only pool: got a source, want ErrNoSource")
	}
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		name  string
		addrs []string
		want  string // appears in the error
	}{
		{"not on this host", []string{"127.0.0.2", "192.0.2.77"}, "192.0.2.77"},
		{"duplicate", []string{"127.0.0.2", "127.0.0.2"}, "127.0.0.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(addrs(t, tc.addrs...), RoundRobin)
			if err == nil || !contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %s", err, tc.want)
			}
		})
	}
	if _, err := New(nil, RoundRobin); err == nil {
		t.Fatal("empty pool accepted")
	}
	if _, err := New(addrs(t, "127.0.0.2"), "fastest"); err == nil {
		t.Fatal("unknown strategy accepted")
	}
}

func TestFamilyOf(t *testing.T) {
	for in, want := range map[string]Family{
		"127.0.0.1": IPv4, "::ffff:10.0.0.1": IPv4, "::1": IPv6, "example.com": Any, "": Any,
	} {
		if got := FamilyOf(in); got != want {
			t.Errorf("FamilyOf(%q) = %v, want %v", in, got, want)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// New builds a pool of single addresses, for this package's tests.
func New(addrs []netip.Addr, strategy Strategy) (*Pool, error) {
	entries := make([]netip.Prefix, len(addrs))
	for i, a := range addrs {
		entries[i] = Single(a)
	}
	return NewEntries(entries, nil, strategy)
}

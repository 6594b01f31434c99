package pool

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func TestStickySpreadAndStability(t *testing.T) {
	p := loopbackPool(t, RoundRobin)
	now := time.Unix(1_800_000_000, 0)
	counts := map[string]int{}
	first := map[string]*Source{}
	for i := 0; i < 1000; i++ {
		key := fmt.Sprintf("session-%d", i)
		s, err := p.PickSession(IPv4, Session{Key: key}, now)
		if err != nil {
			t.Fatal(err)
		}
		counts[s.Addr.String()]++
		first[key] = s
		// Every request of one key uses one address, at any time.
		for _, later := range []time.Duration{time.Second, time.Hour, 100 * time.Hour} {
			if again, _ := p.PickSession(Any, Session{Key: key}, now.Add(later)); again != s {
				t.Fatalf("key %s moved from %s to %s without a TTL", key, s.Addr, again.Addr)
			}
		}
	}
	for a, n := range counts {
		if n < 200 || n > 300 {
			t.Errorf("%s holds %d of 1000 sessions, want 250±20%%", a, n)
		}
	}
	// Removing one address moves only the sessions that were on it.
	smaller, err := New(addrs(t, "127.0.0.2", "127.0.0.3", "127.0.0.5"), RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for key, s := range first {
		again, _ := smaller.PickSession(IPv4, Session{Key: key}, now)
		if s.Addr == netip.MustParseAddr("127.0.0.4") {
			moved++
			continue
		}
		if again.Addr != s.Addr {
			t.Fatalf("key %s on %s moved to %s when 127.0.0.4 left", key, s.Addr, again.Addr)
		}
	}
	if moved == 0 {
		t.Fatal("no session was on 127.0.0.4")
	}
}

// A TTL moves a session at the end of its period, and each key's periods
// start at their own offset.
func TestStickyTTL(t *testing.T) {
	p := loopbackPool(t, RoundRobin)
	now := time.Unix(1_800_000_000, 0)
	s := Session{Key: "login-flow", TTL: 10 * time.Minute}
	seen := map[netip.Addr]bool{}
	prev, _ := p.PickSession(Any, s, now)
	changes := 0
	for m := 1; m <= 200; m++ {
		cur, _ := p.PickSession(Any, s, now.Add(time.Duration(m)*time.Minute))
		seen[cur.Addr] = true
		if cur != prev {
			changes++
		}
		prev = cur
	}
	// 200 minutes are 20 periods: the address may change only at period
	// boundaries, and over 20 periods it does move.
	if changes == 0 || changes > 20 || len(seen) < 2 {
		t.Fatalf("%d changes over 20 periods, %d addresses: want some, at most one a period", changes, len(seen))
	}
}

func BenchmarkPickSession(b *testing.B) {
	p := loopbackPool(b, RoundRobin)
	s := Session{Key: "customer-42", TTL: 10 * time.Minute}
	now := time.Now()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_, _ = p.PickSession(IPv4, s, now)
	}
}

package pool

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func blockSource(t testing.TB, cidr string) *Source {
	t.Helper()
	return newSource(netip.MustParsePrefix(cidr), 0)
}

// Every Local address is inside the block; a /64 gives a new one each
// time; the network/broadcast (all-zeros/all-ones) host parts are skipped
// where the block has more than two addresses.
func TestBlockLocal(t *testing.T) {
	for _, tc := range []struct {
		cidr     string
		distinct int // at least, of 2000 draws
		all      int // exactly, when the block is small
	}{
		{"2001:db8:1::/64", 2000, 0},
		{"2001:db8:1::/48", 2000, 0},
		{"2001:db8:1::/126", 0, 2}, // ::1 and ::2
		{"2001:db8:1::/127", 0, 2},
		{"203.0.113.0/24", 200, 0},
		{"203.0.113.0/30", 0, 2},
		{"203.0.113.0/31", 0, 2},
		{"10.0.0.0/8", 1990, 0},
	} {
		s := blockSource(t, tc.cidr)
		if !s.Block || s.Label != tc.cidr {
			t.Fatalf("%s: Block %v, Label %q", tc.cidr, s.Block, s.Label)
		}
		p := s.Prefix
		seen := map[netip.Addr]bool{}
		for i := 0; i < 2000; i++ {
			a := s.Local()
			if !p.Contains(a) {
				t.Fatalf("%s: %s is outside the block", tc.cidr, a)
			}
			seen[a] = true
		}
		hostBits := p.Addr().BitLen() - p.Bits()
		if hostBits >= 2 && seen[p.Addr()] {
			t.Errorf("%s: used the all-zeros host address", tc.cidr)
		}
		if tc.all > 0 && len(seen) != tc.all {
			t.Errorf("%s: %d distinct addresses %v, want %d", tc.cidr, len(seen), seen, tc.all)
		}
		if len(seen) < tc.distinct {
			t.Errorf("%s: %d distinct addresses of 2000 draws, want >= %d", tc.cidr, len(seen), tc.distinct)
		}
	}
	if a := blockSource(t, "203.0.113.0/30"); a.Local() == netip.MustParseAddr("203.0.113.3") {
		t.Error("/30: used the broadcast address")
	}
}

// A session's address in a block is stable, the same for every process
// (derived, not stored), different between keys, and moves with its TTL.
func TestBlockSessionLocal(t *testing.T) {
	s := blockSource(t, "2001:db8:1::/64")
	now := time.Unix(1_800_000_000, 0)
	a := s.SessionLocal(Session{Key: "cart7"}, now)
	if !s.Prefix.Contains(a) {
		t.Fatalf("%s outside the block", a)
	}
	for i := 0; i < 10; i++ {
		if b := s.SessionLocal(Session{Key: "cart7"}, now.Add(time.Duration(i)*time.Hour)); b != a {
			t.Fatalf("session moved from %s to %s without a TTL", a, b)
		}
	}
	if b := s.SessionLocal(Session{Key: "cart8"}, now); b == a {
		t.Fatal("two keys share an address")
	}
	ttl := Session{Key: "cart7", TTL: time.Minute}
	first := s.SessionLocal(ttl, now)
	if s.SessionLocal(ttl, now.Add(2*time.Minute)) == first {
		t.Fatal("TTL did not move the session")
	}
	// Known value: any change to the derivation moves every live session
	// of every deployment, so it must be deliberate.
	if got := a.String(); got != "2001:db8:1:0:9447:39b7:f556:671f" {
		t.Fatalf("cart7 binds %s; the derivation changed", got)
	}
	if single := newSource(netip.MustParsePrefix("127.0.0.2/32"), 0); single.SessionLocal(ttl, now) != single.Addr || single.Local() != single.Addr {
		t.Fatal("a single address must bind itself")
	}
}

func TestBlockLocalDoesNotAllocate(t *testing.T) {
	s := blockSource(t, "2001:db8:1::/64")
	if n := testing.AllocsPerRun(1000, func() { _ = s.Local() }); n != 0 {
		t.Errorf("Local allocates %v times", n)
	}
}

// 127.0.0.0/8 is routed local on every Linux host, so a block inside it
// passes the start-up check without root; a block with no local route
// fails with the command that is missing.
func TestBlockStartupCheck(t *testing.T) {
	p, err := NewEntries([]netip.Prefix{netip.MustParsePrefix("127.0.1.0/24")}, nil, RoundRobin)
	if err != nil {
		t.Fatalf("127.0.1.0/24: %v", err)
	}
	src := p.Sources()[0]
	target := closingListener(t)
	d := NewDialer(p, DialerOptions{})
	seen := map[netip.Addr]bool{}
	for i := 0; i < 20; i++ {
		host, port, _ := SplitTarget(target)
		c, err := d.OpenTCP(context.Background(), Egress{Src: src, Local: src.Local()}, host, port)
		if err != nil {
			t.Fatal(err)
		}
		a := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr()
		if !src.Prefix.Contains(a) {
			t.Fatalf("bound %s, outside %s", a, src.Prefix)
		}
		seen[a] = true
		c.Close()
	}
	if len(seen) < 15 {
		t.Errorf("20 dials used %d addresses of a /24", len(seen))
	}

	for cidr, cmd := range map[string]string{
		"198.18.200.0/24":    "`ip -4 route add local 198.18.200.0/24 dev lo`",
		"2001:db8:dead::/64": "`ip -6 route add local 2001:db8:dead::/64 dev lo`",
	} {
		_, err := NewEntries([]netip.Prefix{netip.MustParsePrefix(cidr)}, nil, RoundRobin)
		if !errors.Is(err, ErrNotRouted) || !strings.Contains(err.Error(), cmd) {
			t.Errorf("%s: %v, want ErrNotRouted naming %s", cidr, err, cmd)
		}
	}
}

// Happy eyeballs: the preferred family wins when it connects; when it
// fails the other starts at once; when it hangs the other starts after
// fallbackDelay and wins, and the loser is cancelled.
func TestHappyEyeballs(t *testing.T) {
	v6, v4 := &Source{Label: "v6"}, &Source{Label: "v4"}
	fail := errors.New("unreachable")
	ok := func(src *Source) func(context.Context) (net.Conn, *Source, error) {
		return func(context.Context) (net.Conn, *Source, error) { return nil, src, nil }
	}
	bad := func(src *Source) func(context.Context) (net.Conn, *Source, error) {
		return func(context.Context) (net.Conn, *Source, error) { return nil, src, fail }
	}
	hang := func(src *Source, cancelled chan<- bool) func(context.Context) (net.Conn, *Source, error) {
		return func(ctx context.Context) (net.Conn, *Source, error) {
			<-ctx.Done()
			cancelled <- true
			return nil, src, ctx.Err()
		}
	}
	ctx := context.Background()
	if _, src, err := happyEyeballs(ctx, ok(v6), ok(v4)); err != nil || src != v6 {
		t.Errorf("both fine: %v %v, want v6", src.Label, err)
	}
	start := time.Now()
	if _, src, err := happyEyeballs(ctx, bad(v6), ok(v4)); err != nil || src != v4 {
		t.Errorf("v6 fails: %v %v, want v4", src, err)
	}
	if d := time.Since(start); d >= fallbackDelay {
		t.Errorf("fallback after a failure took %s, want at once", d)
	}
	cancelled := make(chan bool, 1)
	start = time.Now()
	if _, src, err := happyEyeballs(ctx, hang(v6, cancelled), ok(v4)); err != nil || src != v4 {
		t.Errorf("v6 hangs: %v %v, want v4", src, err)
	}
	if d := time.Since(start); d < fallbackDelay {
		t.Errorf("fallback started after %s, want %s", d, fallbackDelay)
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Error("the hanging attempt was not cancelled")
	}
	if _, src, err := happyEyeballs(ctx, bad(v6), bad(v4)); !errors.Is(err, fail) || src != v6 {
		t.Errorf("both fail: %v %v, want the preferred family's error", src, err)
	}
}

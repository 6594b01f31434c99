package pool

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/dest"
)

// Choosing and opening are separate: Choose follows the strategy and the
// session without opening anything; OpenTCP binds exactly the chosen
// local address, checks the destination policy and reports to OnDial,
// whoever chose.
func TestEgressChooseThenOpen(t *testing.T) {
	addr, peers := acceptPeers(t)
	ap := netip.MustParseAddrPort(addr)
	var dials int
	d := NewDialer(loopbackPool(t, RoundRobin), DialerOptions{Timeout: 5 * time.Second, Resolver: offline,
		Policy: dest.NewPolicy([]netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, nil),
		OnDial: func(*Source, time.Duration, error) { dials++ }})
	ctx := context.Background()
	var chosen []Egress
	for range 3 {
		e, err := d.Choose(ctx, IPv4, Session{})
		if err != nil {
			t.Fatal(err)
		}
		if e.Local != e.Src.Addr {
			t.Fatalf("single-address source %s chose local %s", e.Src.Addr, e.Local)
		}
		chosen = append(chosen, e)
	}
	if dials != 0 {
		t.Fatalf("Choose opened %d connections", dials)
	}
	// Opened in the reverse order: each binds its own egress.
	for i := len(chosen) - 1; i >= 0; i-- {
		c, err := d.OpenTCP(ctx, chosen[i], ap.Addr().String(), ap.Port())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if peer := <-peers; peer.Addr() != chosen[i].Local {
			t.Fatalf("opened over %s, target saw %s", chosen[i].Local, peer.Addr())
		}
	}
	if chosen[0].Src == chosen[1].Src || dials != 3 {
		t.Fatalf("round-robin chose %v; OnDial told %d times", chosen, dials)
	}
	// The policy applies at the open step, whatever was chosen.
	if _, err := d.OpenTCP(ctx, chosen[0], "127.0.0.2", 80); !errors.Is(err, dest.ErrForbidden) {
		t.Fatalf("forbidden destination over a chosen egress: %v", err)
	}
}

// In a block, a session's egress is one address, chosen again the same.
func TestEgressSessionInBlock(t *testing.T) {
	p, err := NewEntries([]netip.Prefix{netip.MustParsePrefix("127.0.1.0/24")}, nil, RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	d := NewDialer(p, DialerOptions{})
	s := Session{Key: "cart7"}
	a, _ := d.Choose(context.Background(), IPv4, s)
	b, _ := d.Choose(context.Background(), IPv4, s)
	if a.Local != b.Local || !a.Src.Prefix.Contains(a.Local) {
		t.Fatalf("session chose %s then %s in %s", a.Local, b.Local, a.Src.Prefix)
	}
}

package pool

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/dest"
	"github.com/rotor-proxy/rotor/internal/target"
)

// Odd spellings and names are checked as the address actually dialled.
func TestDialerEnforcesPolicy(t *testing.T) {
	res := offline // localhost from /etc/hosts
	d := NewDialer(loopbackPool(t, RoundRobin), DialerOptions{Resolver: res, Policy: dest.NewPolicy(nil, nil)})
	for _, target := range []string{"127.0.0.1:1", "127.1:1", "2130706433:1", "0x7f000001:1", "[::ffff:127.0.0.1]:1", "localhost:1", "169.254.169.254:80"} {
		_, _, err := d.Dial(t.Context(), target, Session{})
		if !errors.Is(err, dest.ErrForbidden) || Classify(err) != ClassForbidden {
			t.Errorf("Dial(%s): %v, want dest.ErrForbidden", target, err)
		}
	}
}

// AAAA answers that carry a forbidden IPv4 address are refused as the
// literal would be, before any packet leaves: from an IPv6 source, where
// a NAT64 gateway or 6to4 relay would deliver them.
func TestDialerRefusesEmbeddedIPv4Answers(t *testing.T) {
	p, err := New(addrs(t, "::1"), RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	hosts := map[string][]netip.Addr{}
	for i, a := range []string{"64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "2002:7f00:1::1", "::ffff:0:127.0.0.1", "::127.0.0.1", "2001:0:7f00:1::cb00:7109"} {
		hosts[fmt.Sprintf("embed%d.test", i)] = []netip.Addr{netip.MustParseAddr(a)}
	}
	d := NewDialer(p, DialerOptions{Timeout: time.Second, Resolver: target.FakeResolver(hosts), Policy: dest.NewPolicy(nil, nil)})
	for name, a := range hosts {
		for _, dst := range []string{name + ":80", "[" + a[0].String() + "]:80"} {
			_, _, err := d.Dial(t.Context(), dst, Session{})
			if !errors.Is(err, dest.ErrForbidden) || Classify(err) != ClassForbidden {
				t.Errorf("Dial(%s) (%s): %v, want dest.ErrForbidden", dst, a[0], err)
			}
		}
	}
}

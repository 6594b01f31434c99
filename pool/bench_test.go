package pool

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// go test -bench Pick -benchmem -cpu 1,2 ./pool/
func BenchmarkPick(b *testing.B) {
	for _, st := range []Strategy{RoundRobin, Random, LeastRecent} {
		p := loopbackPool(b, st)
		b.Run(string(st), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_, _ = p.Pick(IPv4)
			}
		})
		b.Run(string(st)+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_, _ = p.Pick(IPv4)
				}
			})
		})
	}
}

// The floor under any pick on this machine: one uncontended atomic add
// (round-robin's counter) and one math/rand/v2 draw (random's).
func BenchmarkFloor(b *testing.B) {
	var c atomic.Uint64
	var sink uint64
	b.Run("atomic-add", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			sink += c.Add(1)
		}
	})
	b.Run("rand-uint64n", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			sink += rand.Uint64N(4)
		}
	})
	_ = sink
}

// Per-connection cost of the bound dial (socket, IP_BIND_ADDRESS_NO_PORT,
// bind, connect on loopback, close), with allocations.
func BenchmarkDialAddr(b *testing.B) {
	d := NewDialer(loopbackPool(b, RoundRobin), DialerOptions{Timeout: 5 * time.Second})
	dst := netip.MustParseAddrPort(closingListener(b))
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c, _, err := d.DialAddr(ctx, dst, Session{})
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// The pick plus the address a connection binds, for fixed addresses and
// for a CIDR block (a random address per connection). rotorbench pick
// prints the same next to each other:
//
//	go test -run '^$' -bench PickLocal -benchmem ./pool/
func BenchmarkPickLocal(b *testing.B) {
	for name, entries := range map[string][]string{
		"fixed4": {"2001:db8::1/128", "2001:db8::2/128", "2001:db8::3/128", "2001:db8::4/128"},
		"cidr64": {"2001:db8:1::/64"},
	} {
		var ps []netip.Prefix
		for _, e := range entries {
			ps = append(ps, netip.MustParsePrefix(e))
		}
		p, err := NewUnchecked(ps, RoundRobin)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			var a netip.Addr
			for i := 0; i < b.N; i++ {
				src, _ := p.Pick(IPv6)
				a = src.Local()
			}
			_ = a
		})
	}
}

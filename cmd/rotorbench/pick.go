package main

import (
	"fmt"
	"io"
	"net/netip"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/rotor-proxy/rotor/pool"
)

// pickCase is one pool whose pick cost rotorbench pick reports.
type pickCase struct {
	name    string
	entries []string
	family  pool.Family
}

var pickCases = []pickCase{
	{"fixed: 4 IPv4 addresses", []string{"192.0.2.1/32", "192.0.2.2/32", "192.0.2.3/32", "192.0.2.4/32"}, pool.IPv4},
	{"fixed: 4 IPv6 addresses", []string{"2001:db8::1/128", "2001:db8::2/128", "2001:db8::3/128", "2001:db8::4/128"}, pool.IPv6},
	{"CIDR: one IPv6 /64", []string{"2001:db8:1::/64"}, pool.IPv6},
	{"CIDR: four IPv6 /64s", []string{"2001:db8:1::/64", "2001:db8:2::/64", "2001:db8:3::/64", "2001:db8:4::/64"}, pool.IPv6},
	{"CIDR: one IPv4 /24", []string{"198.51.100.0/24"}, pool.IPv4},
}

// pickResult is the cost of choosing the next source and the address a
// connection binds (Pick, then Local), as rotor does per connection.
type pickResult struct {
	name                      string
	serial, parallel, session time.Duration
	allocs, sessionAllocs     int64
}

// measurePicks runs testing.Benchmark over every case: the
// rotation pick (serial and from all Ps), and a sticky-session pick.
func measurePicks() ([]pickResult, error) {
	var out []pickResult
	for _, c := range pickCases {
		var entries []netip.Prefix
		for _, e := range c.entries {
			entries = append(entries, netip.MustParsePrefix(e))
		}
		// Unchecked: the documentation ranges are not on this host, and a
		// pick's cost does not depend on them being there.
		p, err := pool.NewUnchecked(entries, pool.RoundRobin)
		if err != nil {
			return nil, err
		}
		var sink netip.Addr
		serial := testing.Benchmark(func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				src, _ := p.Pick(c.family)
				sink = src.Local()
			}
		})
		parallel := testing.Benchmark(func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				var a netip.Addr
				for pb.Next() {
					src, _ := p.Pick(c.family)
					a = src.Local()
				}
				_ = a
			})
		})
		sess := pool.Session{Key: "cart7", TTL: 10 * time.Minute}
		session := testing.Benchmark(func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				now := time.Now()
				src, _ := p.PickSession(c.family, sess, now)
				sink = src.SessionLocal(sess, now)
			}
		})
		_ = sink
		out = append(out, pickResult{name: c.name,
			serial: time.Duration(serial.NsPerOp()), parallel: time.Duration(parallel.NsPerOp()),
			session: time.Duration(session.NsPerOp()), allocs: serial.AllocsPerOp(), sessionAllocs: session.AllocsPerOp()})
	}
	return out, nil
}

func writePicks(w io.Writer, rs []pickResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "pool\tpick+address ns/op\tparallel ns/op\tallocs/op\tsession pick ns/op\tallocs/op")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\n", r.name, r.serial.Nanoseconds(), r.parallel.Nanoseconds(), r.allocs,
			r.session.Nanoseconds(), r.sessionAllocs)
	}
	tw.Flush()
}

package metrics

import (
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/pool"
)

// What metrics add to one request: the counters a CONNECT or SOCKS5
// connection touches (request, dial with latency histogram, tunnel gauge
// up and down, bytes), serially and from all Ps at once. Compare with
// BenchmarkForward/metrics in ./httpproxy for the share of a whole
// request:
//
//	go test -run '^$' -bench . -benchmem ./metrics/
func BenchmarkRequestMetrics(b *testing.B) {
	p := testPool(b)
	m := New(func() *pool.Pool { return p }, "bench")
	srcs := p.Sources()
	record := func(i int) {
		src := srcs[i&1]
		m.Dialed(src, 300*time.Microsecond, nil)
		s := m.Source(src)
		s.Request(Connect, nil)
		s.TunnelOpened()
		s.Bytes(512, 4096)
		s.TunnelClosed()
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			record(i)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				record(i)
				i++
			}
		})
	})
}

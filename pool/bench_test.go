package pool

import "testing"

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

package socks

import (
	"runtime"
	"testing"
	"time"
)

// BenchmarkAssociationMemory reports the heap and goroutines one open UDP
// association holds on the server (client side excluded: the client's
// sockets are not on the heap, its control connections are counted once
// per association on both sides and are the same for any design):
//
//	go test -run '^$' -bench AssociationMemory -benchtime 200x ./socks/
func BenchmarkAssociationMemory(b *testing.B) {
	s, proxy, _ := udpServer(b, nil)
	e := newUDPEcho(b)
	// One association first: the server's loops start with it.
	w := associate(b, proxy, user)
	w.send(b, e.Addr, 0, []byte("warm"))
	w.recv(b, 5*time.Second)
	heap0, g0 := heapInUse(), runtime.NumGoroutine()
	as := make([]*assoc, b.N)
	for i := range as {
		as[i] = associate(b, proxy, user)
		as[i].send(b, e.Addr, 0, []byte("ping"))
		if _, _, ok := as[i].recv(b, 5*time.Second); !ok {
			b.Fatal("no reply")
		}
	}
	heap1, g1 := heapInUse(), runtime.NumGoroutine()
	b.ReportMetric(float64(heap1-heap0)/float64(b.N), "heap-B/assoc")
	b.ReportMetric(float64(g1-g0)/float64(b.N), "goroutines/assoc")
	for _, a := range as {
		a.ctl.Close()
	}
	for deadline := time.Now().Add(5 * time.Second); s.Active() > 1 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

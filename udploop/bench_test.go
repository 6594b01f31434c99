package udploop

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// BenchmarkRelay compares one round trip through a relay of two sockets
// (client → in → echo, echo → out → client, as a SOCKS5 UDP association
// relays) run by a Loop with the same relay run as Go's poller does it,
// a goroutine reading each socket. Compare the two in one run:
//
//	go test -run '^$' -bench Relay -benchmem -count 3 ./udploop/
func BenchmarkRelay(b *testing.B) {
	b.Run("loop", func(b *testing.B) {
		g := NewGroup(1)
		defer g.Close()
		l, err := g.Next()
		if err != nil {
			b.Fatal(err)
		}
		in, _ := l.Adopt(listen(b, "udp4", "127.0.0.1:0"))
		out, _ := l.Adopt(listen(b, "udp4", "127.0.0.1:0"))
		defer in.Close()
		defer out.Close()
		echo := startEcho(b)
		var client netip.AddrPort
		_ = out.Serve(0, func(buf []byte, head int, _ netip.AddrPort) { _ = in.WriteTo(buf[head:], client) })
		_ = in.Serve(0, func(buf []byte, head int, from netip.AddrPort) {
			client = from
			_ = out.WriteTo(buf[head:], echo)
		})
		pingPong(b, in.LocalAddr())
	})
	b.Run("goroutines", func(b *testing.B) {
		in := listen(b, "udp4", "127.0.0.1:0")
		out := listen(b, "udp4", "127.0.0.1:0")
		echo := startEcho(b)
		var client sync.Map
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			buf := make([]byte, maxRead)
			for {
				n, from, err := in.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				client.Store(0, from)
				_, _ = out.WriteToUDPAddrPort(buf[:n], echo)
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, maxRead)
			for {
				n, _, err := out.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				if c, ok := client.Load(0); ok {
					_, _ = in.WriteToUDPAddrPort(buf[:n], c.(netip.AddrPort))
				}
			}
		}()
		pingPong(b, in.LocalAddr().(*net.UDPAddr).AddrPort())
		in.Close()
		out.Close()
		wg.Wait()
	})
}

// startEcho answers every datagram to 127.0.0.1 with itself until the
// benchmark ends.
func startEcho(b *testing.B) netip.AddrPort {
	c := listen(b, "udp4", "127.0.0.1:0")
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	b.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// pingPong sends b.N 64-byte datagrams to relay one at a time, each after
// the previous one's answer.
func pingPong(b *testing.B, relay netip.AddrPort) {
	c := listen(b, "udp4", "127.0.0.1:0")
	defer c.Close()
	msg := make([]byte, 64)
	buf := make([]byte, 2048)
	// Loopback does not lose datagrams; if one were lost the run ends
	// with an error rather than hanging.
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.WriteToUDPAddrPort(msg, relay); err != nil {
			b.Fatal(err)
		}
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			b.Fatal(err)
		}
	}
}

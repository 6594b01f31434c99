package udploop

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func listen(t testing.TB, network, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// echoOn adopts a socket on addr into l that answers every datagram with
// the sender's address, written into the headroom, then the datagram.
func echoOn(t testing.TB, l *Loop, network, addr string) (*Socket, *atomic.Int64) {
	t.Helper()
	s, err := l.Adopt(listen(t, network, addr))
	if err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int64
	err = s.Serve(maxHead, func(buf []byte, head int, from netip.AddrPort) {
		handled.Add(1)
		tag := []byte(from.String() + "|")
		start := head - len(tag)
		copy(buf[start:], tag)
		if err := s.WriteTo(buf[start:], from); err != nil {
			t.Errorf("WriteTo %s: %v", from, err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, &handled
}

func roundTrip(t testing.TB, c *net.UDPConn, to netip.AddrPort, payload []byte) []byte {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(payload, to); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 70000)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no answer from %s: %v", to, err)
	}
	if from != to {
		t.Fatalf("answer from %s, want %s", from, to)
	}
	return buf[:n]
}

func newGroup(t testing.TB, n int) *Group {
	g := NewGroup(n)
	t.Cleanup(g.Close)
	return g
}

// Datagrams come in with their sender's address, the headroom is the
// handler's, and the largest datagram UDP carries arrives whole; over
// IPv4 and IPv6.
func TestEchoThroughLoop(t *testing.T) {
	g := newGroup(t, 2)
	for _, fam := range []struct{ network, server, client string }{
		{"udp4", "127.0.0.1:0", "127.0.0.3:0"},
		{"udp6", "[::1]:0", "[::1]:0"},
	} {
		t.Run(fam.network, func(t *testing.T) {
			l, err := g.Next()
			if err != nil {
				t.Fatal(err)
			}
			c, err := net.ListenUDP(fam.network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(fam.client)))
			if err != nil {
				t.Skipf("no %s loopback here: %v", fam.network, err)
			}
			defer c.Close()
			s, handled := echoOn(t, l, fam.network, fam.server)
			me := c.LocalAddr().(*net.UDPAddr).AddrPort()
			for i, size := range []int{0, 1, 1400, 65507 - 64} {
				if fam.network == "udp6" && size > 65527-64 {
					continue
				}
				payload := bytes.Repeat([]byte{byte('a' + i)}, size)
				got := roundTrip(t, c, s.LocalAddr(), payload)
				want := append([]byte(me.String()+"|"), payload...)
				if !bytes.Equal(got, want) {
					t.Fatalf("%d-byte datagram: answer %d bytes starting %q, want %d starting %q",
						size, len(got), got[:min(len(got), 40)], len(want), want[:min(len(want), 40)])
				}
			}
			if n := handled.Load(); n != 4 {
				t.Errorf("handler ran %d times, want 4", n)
			}
		})
	}
}

// After Close returns the handler never runs again and the descriptor is
// gone; a socket opened next, which may reuse the number, gets its own
// datagrams only.
func TestCloseStopsHandlerAndFreesDescriptor(t *testing.T) {
	g := newGroup(t, 1)
	l, _ := g.Next()
	c := listen(t, "udp4", "127.0.0.1:0")
	defer c.Close()
	a, aHandled := echoOn(t, l, "udp4", "127.0.0.1:0")
	roundTrip(t, c, a.LocalAddr(), []byte("x"))
	fds := openFDs(t)
	a.Close()
	if n := openFDs(t); n != fds-1 {
		t.Errorf("%d descriptors open after Close, want %d", n, fds-1)
	}
	before := aHandled.Load()
	_, _ = c.WriteToUDPAddrPort([]byte("late"), a.LocalAddr())
	b, bHandled := echoOn(t, l, "udp4", "127.0.0.1:0")
	for range 50 {
		roundTrip(t, c, b.LocalAddr(), []byte("y"))
	}
	if n := aHandled.Load(); n != before {
		t.Errorf("closed socket's handler ran %d more times", n-before)
	}
	if n := bHandled.Load(); n != 50 {
		t.Errorf("new socket's handler ran %d times, want 50", n)
	}
	a.Close() // a second Close does nothing
}

// A stopped group refuses new work at once and closes what it held; a
// socket adopted but never served is closed by its own Close.
func TestGroupClose(t *testing.T) {
	g := NewGroup(1)
	l, err := g.Next()
	if err != nil {
		t.Fatal(err)
	}
	fds := openFDs(t)
	served, _ := echoOn(t, l, "udp4", "127.0.0.1:0")
	idle, err := l.Adopt(listen(t, "udp4", "127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
	if l.Post(func() { t.Error("task ran on a stopped loop") }) {
		t.Error("Post on a stopped loop reported true")
	}
	if err := idle.Serve(0, func([]byte, int, netip.AddrPort) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("Serve on a stopped loop: %v, want ErrClosed", err)
	}
	idle.Close()
	served.Close()
	if _, err := g.Next(); !errors.Is(err, ErrClosed) {
		t.Errorf("Next after Close: %v, want ErrClosed", err)
	}
	if n := openFDs(t); n != fds-2 {
		t.Errorf("%d descriptors open, want %d (the loop's two gone too)", n, fds-2)
	}
}

// Posted tasks run on the loop, in order, between datagrams.
func TestPostRunsInOrder(t *testing.T) {
	g := newGroup(t, 1)
	l, _ := g.Next()
	var got []int
	done := make(chan struct{})
	for i := range 100 {
		l.Post(func() {
			got = append(got, i)
			if i == 99 {
				close(done)
			}
		})
	}
	<-done
	for i, v := range got {
		if v != i {
			t.Fatalf("task %d ran as number %d", v, i)
		}
	}
}

// Many sockets over two loops, each with a client sending at once: every
// datagram is answered by its own socket.
func TestManySockets(t *testing.T) {
	g := newGroup(t, 2)
	const n = 200
	socks := make([]*Socket, n)
	for i := range socks {
		l, err := g.Next()
		if err != nil {
			t.Fatal(err)
		}
		socks[i], _ = echoOn(t, l, "udp4", "127.0.0.1:0")
	}
	errs := make(chan error, n)
	for i := range socks {
		go func() {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			buf := make([]byte, 256)
			for j := range 20 {
				msg := fmt.Sprintf("%d/%d", i, j)
				_, _ = c.WriteToUDPAddrPort([]byte(msg), socks[i].LocalAddr())
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				k, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil || from != socks[i].LocalAddr() || !bytes.HasSuffix(buf[:k], []byte("|"+msg)) {
					errs <- fmt.Errorf("socket %d round %d: %q from %s: %v", i, j, buf[:k], from, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// A send the family cannot carry fails rather than going astray.
func TestWriteToWrongFamily(t *testing.T) {
	g := newGroup(t, 1)
	l, _ := g.Next()
	s, err := l.Adopt(listen(t, "udp4", "127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	errc := make(chan error, 1)
	l.Post(func() { errc <- s.WriteTo([]byte("x"), netip.MustParseAddrPort("[::1]:9")) })
	if err := <-errc; err == nil {
		t.Error("IPv6 destination from an IPv4 socket: no error")
	}
}

func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// A burst larger than one recvmmsg batch queued before the loop reads is
// read whole: the loop goes back for what a full batch left behind.
func TestBurstIsReadWhole(t *testing.T) {
	g := newGroup(t, 1)
	l, _ := g.Next()
	c := listen(t, "udp4", "127.0.0.1:0")
	defer c.Close()
	s, err := l.Adopt(listen(t, "udp4", "127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Queued before the socket is served: its first read finds them all.
	const n = 10*batchSize + 1
	for i := range n {
		if _, err := c.WriteToUDPAddrPort([]byte{byte(i)}, s.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	var handled atomic.Int64
	err = s.Serve(0, func(buf []byte, head int, from netip.AddrPort) {
		handled.Add(1)
		_ = s.WriteTo(buf[head:], from)
	})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 128)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range n {
		k, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("answer %d of %d: %v (handler ran %d times)", i+1, n, err, handled.Load())
		}
		if got := buf[k-1]; got != byte(i) {
			t.Fatalf("answer %d carries datagram %d: order lost", i, got)
		}
	}
}

// Two sockets with bursts queued take turns, a batch each per round: one
// flooded socket cannot hold the loop while another waits.
func TestReadyTakeTurns(t *testing.T) {
	g := newGroup(t, 1)
	l, _ := g.Next()
	c := listen(t, "udp4", "127.0.0.1:0")
	defer c.Close()
	const n = 10 * batchSize
	var socks [2]*Socket
	for i := range socks {
		s, err := l.Adopt(listen(t, "udp4", "127.0.0.1:0"))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		socks[i] = s
		for j := range n {
			if _, err := c.WriteToUDPAddrPort([]byte{byte(j)}, s.LocalAddr()); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Both registered in one task: the loop's first round finds both
	// ready with all their datagrams queued.
	var order []int
	done := make(chan struct{})
	l.Post(func() {
		for i, s := range socks {
			if err := s.register(0, func([]byte, int, netip.AddrPort) {
				order = append(order, i)
				if len(order) == 2*n {
					close(done)
				}
			}); err != nil {
				t.Error(err)
			}
		}
	})
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("handled %d of %d datagrams", len(order), 2*n)
	}
	// Epoll may list the two in either order from one round to the next:
	// a run of two batches is fair, a longer one is not.
	run, longest := 0, 0
	for i := range order {
		if i > 0 && order[i] == order[i-1] {
			run++
		} else {
			run = 1
		}
		longest = max(longest, run)
	}
	if longest > 2*batchSize {
		t.Errorf("one socket had %d datagrams handled in a row (batch %d): %v", longest, batchSize, order)
	}
}

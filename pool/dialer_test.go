package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rotor-proxy/rotor/internal/target"
)

// offline resolves from /etc/hosts only; tests send no DNS queries.
var offline = &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("no DNS in tests")
}}

// acceptPeers returns a target on 127.0.0.1 that reports the peer of
// each accepted connection on the channel.
func acceptPeers(t *testing.T) (string, <-chan netip.AddrPort) {
	t.Helper()
	peers := make(chan netip.AddrPort, 16)
	return startTarget(t, func(c *net.TCPConn) { peers <- netip.MustParseAddrPort(c.RemoteAddr().String()) }), peers
}

// closingListener accepts on 127.0.0.1 and closes every connection at
// once: a target for dials that need only connect.
func closingListener(tb testing.TB) string {
	tb.Helper()
	return startTarget(tb, func(*net.TCPConn) {})
}

// startTarget serves handle on 127.0.0.1 until cleanup and returns the
// address.
func startTarget(tb testing.TB, handle func(*net.TCPConn)) string {
	tb.Helper()
	s, err := target.TCP("127.0.0.1:0", handle)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s.Addr
}

func TestDialBindsSourceInOrder(t *testing.T) {
	addr, peers := acceptPeers(t)
	d := NewDialer(loopbackPool(t, RoundRobin), DialerOptions{Timeout: 5 * time.Second, Resolver: offline})
	_, port, _ := net.SplitHostPort(addr)
	for i, target := range []string{addr, "localhost:" + port, addr, "localhost:" + port} {
		c, src, err := d.Dial(context.Background(), target, Session{})
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("127.0.0.%d", 2+i); src.Addr.String() != want {
			t.Errorf("dial %d: source %s, want %s", i, src.Addr, want)
		}
		if local := netip.MustParseAddrPort(c.LocalAddr().String()).Addr(); local != src.Addr {
			t.Errorf("socket bound to %s, want %s", local, src.Addr)
		}
		// IP_BIND_ADDRESS_NO_PORT was set before bind.
		rc, _ := c.(*net.TCPConn).SyscallConn()
		var v int
		var gerr error
		_ = rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT) })
		if gerr != nil || v != 1 {
			t.Errorf("IP_BIND_ADDRESS_NO_PORT = %d (%v), want 1", v, gerr)
		}
		c.Close()
		if peer := <-peers; peer.Addr() != src.Addr {
			t.Errorf("target saw %s, want %s", peer.Addr(), src.Addr)
		}
	}
}

func TestDialErrorsClassified(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	d := NewDialer(loopbackPool(t, RoundRobin), DialerOptions{Timeout: 5 * time.Second, Resolver: offline})
	for _, tc := range []struct {
		target string
		want   Class
	}{
		{closed, ClassRefused},
		{"[::1]:80", ClassNoSource},
		{"no-such-name.invalid:80", ClassDNS},
		{"127.0.0.1", ClassBadTarget},
		{"127.0.0.1:0", ClassBadTarget},
		{"127.0.0.1:70000", ClassBadTarget},
		{":80", ClassBadTarget},
	} {
		_, _, err := d.Dial(context.Background(), tc.target, Session{})
		if got := Classify(err); got != tc.want {
			t.Errorf("Dial(%q): %v classified %v, want %v", tc.target, err, got, tc.want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := d.Dial(ctx, "localhost:1", Session{}); Classify(err) != ClassCanceled {
		t.Errorf("canceled dial: %v classified %v", err, Classify(err))
	}
	short := NewDialer(loopbackPool(t, RoundRobin), DialerOptions{Timeout: time.Nanosecond, Resolver: offline})
	if _, _, err := short.Dial(context.Background(), closed, Session{}); Classify(err) != ClassTimeout {
		t.Errorf("timed-out dial: %v classified %v", err, Classify(err))
	}
}

// An IPv4 source never dials an AAAA answer: a name with only an IPv6
// address fails with ErrNoAddress from an IPv4 pool, and a name with both
// is dialled over IPv4.
func TestNameResolvesInSourceFamily(t *testing.T) {
	addr, peers := acceptPeers(t)
	ap := netip.MustParseAddrPort(addr)
	res := target.FakeResolver(map[string][]netip.Addr{
		"v6only.test": {netip.MustParseAddr("::1")},
		"dual.test":   {netip.MustParseAddr("::1"), ap.Addr()},
	})
	d := NewDialer(loopbackPool(t, RoundRobin), DialerOptions{Timeout: 5 * time.Second, Resolver: res})
	_, _, err := d.Dial(context.Background(), "v6only.test:80", Session{})
	if !errors.Is(err, ErrNoAddress) || Classify(err) != ClassDNS || !strings.Contains(err.Error(), "it has IPv6 addresses only, and source 127.0.0.") {
		t.Fatalf("v6-only name from an IPv4 pool: got %v, want ErrNoAddress saying which family", err)
	}
	// A name that does not exist is told apart from one without an
	// address of the source's family.
	_, _, err = d.Dial(context.Background(), "nosuch.test:80", Session{})
	if !errors.Is(err, ErrNoSuchHost) || Classify(err) != ClassNoSuchHost || errors.Is(err, ErrNoAddress) {
		t.Fatalf("a name that does not exist: got %v (%v), want ErrNoSuchHost", err, Classify(err))
	}
	c, src, err := d.Dial(context.Background(), fmt.Sprintf("dual.test:%d", ap.Port()), Session{})
	if err != nil {
		t.Fatalf("dual-stack name: %v", err)
	}
	c.Close()
	if peer := <-peers; peer.Addr() != src.Addr {
		t.Fatalf("target saw %s, want %s", peer.Addr(), src.Addr)
	}
}

func TestClassifyByType(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Class
	}{
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, ClassRefused},
		{fmt.Errorf("wrapped: %w", syscall.ENETUNREACH), ClassNetUnreachable},
		{syscall.EHOSTUNREACH, ClassHostUnreachable},
		{syscall.ETIMEDOUT, ClassTimeout},
		{os.ErrDeadlineExceeded, ClassTimeout},
		{context.DeadlineExceeded, ClassTimeout},
		{&net.DNSError{Err: "x", Name: "a", IsNotFound: true}, ClassDNS},
		{&net.DNSError{Err: "x", Name: "a", IsTimeout: true}, ClassTimeout},
		{errors.New("connection refused"), ClassOther}, // text is never matched
	} {
		if got := Classify(tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

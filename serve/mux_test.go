package serve

import (
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// fakeConn is a connection whose every read returns a SOCKS5 greeting at
// once, so that a benchmark measures what is done around the read.
type fakeConn struct{ net.Conn }

var greeting = []byte{5, 1, 0}

func (fakeConn) Read(p []byte) (int, error)      { return copy(p, greeting), nil }
func (fakeConn) SetReadDeadline(time.Time) error { return nil }
func (fakeConn) RemoteAddr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
func (fakeConn) Close() error                    { return nil }

// The mixed port's work per connection, beside the first read a dedicated
// listener's server makes anyway: tracking the connection while it waits,
// a pooled buffer, the dispatch by first byte. Compare with
// BenchmarkMuxDedicated (the read alone, as a dedicated listener does it):
// the difference is the mixed port's cost, against the 200-250 µs of CPU
// a new connection costs rotor end to end (BENCHMARKS.md, connect-new).
//
//	go test -run '^$' -bench 'Mux' -benchmem ./serve/
func BenchmarkMuxMixed(b *testing.B) {
	m := &Mux{Timeout: time.Second, Log: zerolog.Nop(), SOCKS5: func(c net.Conn, first []byte) {}}
	m.Init(nil, nil)
	c := fakeConn{}
	b.ReportAllocs()
	for b.Loop() {
		m.serveConn(c)
	}
}

func BenchmarkMuxDedicated(b *testing.B) {
	c := fakeConn{}
	var buf [512]byte
	handle := func(c net.Conn, first []byte) {}
	b.ReportAllocs()
	for b.Loop() {
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, _ := c.Read(buf[:])
		handle(c, buf[:n])
	}
}

// Each first byte goes to its handler; anything else, and TLS without a
// certificate, to none.
func TestMuxDispatch(t *testing.T) {
	var got string
	m := &Mux{Timeout: time.Second, Log: zerolog.Nop(),
		SOCKS5: func(net.Conn, []byte) { got = "socks5" }, HTTP: func(net.Conn, []byte) { got = "http" }}
	m.Init(nil, nil)
	for _, tc := range []struct {
		first []byte
		want  string
		tls   bool
	}{
		{[]byte{5, 1, 0}, "socks5", false}, {[]byte("CONNECT x:1 HTTP/1.1\r\n"), "http", false},
		{[]byte("get / HTTP/1.1\r\n"), "http", false}, {[]byte{0x16, 3, 1}, "", false}, {[]byte{0x16, 3, 1}, "tls", true},
		{[]byte{4, 1, 0, 80}, "", false}, {[]byte{0xff, 0}, "", false}, {[]byte(" GET"), "", false},
	} {
		got, m.TLS = "", nil
		if tc.tls {
			m.TLS = func(net.Conn, []byte) { got = "tls" }
		}
		greeting = tc.first
		m.serveConn(fakeConn{})
		if got != tc.want {
			t.Errorf("first bytes %q went to %q, want %q", tc.first, got, tc.want)
		}
	}
	greeting = []byte{5, 1, 0}
	if n := m.Conns.Len(); n != 0 {
		t.Errorf("%d connections still tracked", n)
	}
}

package socks

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/things-go/go-socks5/statute"

	"github.com/rotor-proxy/rotor/dest"
	"github.com/rotor-proxy/rotor/internal/testkit"
	"github.com/rotor-proxy/rotor/pool"
)

// memConn is a client that sends fixed bytes and records the replies.
type memConn struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (c *memConn) Read(p []byte) (int, error)       { return c.in.Read(p) }
func (c *memConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *memConn) Close() error                     { return nil }
func (c *memConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1080} }
func (c *memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzHandshake runs the real greeting, RFC 1929 and request path on
// arbitrary client bytes. It must not panic, must never report a tunnel
// (every destination is refused, so no packet leaves), and must answer
// only well-formed SOCKS5 messages.
//
//	go test -run '^$' -fuzz FuzzHandshake -fuzztime 20s ./socks/
func FuzzHandshake(f *testing.F) {
	hello := append([]byte{5, 1, 2}, authMsg(user, pass)...)
	for _, seed := range [][]byte{
		{5, 1, 0},
		hello,
		append(append([]byte{}, hello...), 5, 1, 0, 1, 93, 184, 216, 34, 0, 80),
		append(append([]byte{}, hello...), 5, 1, 0, 3, 11, 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'c', 'o', 'm', 1, 187),
		append(append([]byte{}, hello...), 5, 1, 0, 4, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80),
		append(append([]byte{}, hello...), 5, 2, 0, 1, 1, 2, 3, 4, 0, 80),
		{4, 1, 0, 80, 1, 2, 3, 4, 0},
	} {
		f.Add(seed)
	}
	p, err := testkit.Pool([]netip.Addr{netip.MustParseAddr("127.0.0.2")}, pool.RoundRobin)
	if err != nil {
		f.Fatal(err)
	}
	s := New(Options{Dialer: pool.NewDialer(p, pool.DialerOptions{Timeout: time.Second, Resolver: failingResolver(), Policy: &dest.Policy{Deny: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}}),
		Access: testkit.Access(testkit.OneUser(user, pass)), Log: zerolog.Nop()})
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &memConn{in: bytes.NewReader(data)}
		ss := &session{reply: noReply}
		req, _, err := s.handshake(c, ss)
		if err == nil && req.Command == statute.CommandConnect {
			// Every destination is refused: no connection may open.
			if target, err := s.connect(c, ss, req); target != nil || err == nil {
				t.Fatalf("handshake on fuzz input opened a tunnel")
			}
		}
		out := c.out.Bytes()
		if len(out) > 0 && out[0] != 5 {
			t.Fatalf("reply does not start with version 5: % x", out)
		}
	})
}

// FuzzUDPHeader: any datagram parses or not without panicking; what
// parses re-encodes to the same header for an address, and the payload
// is the rest of the datagram.
//
//	go test -run '^$' -fuzz FuzzUDPHeader -fuzztime 20s ./socks/
func FuzzUDPHeader(f *testing.F) {
	for _, seed := range [][]byte{
		{0, 0, 0, 1, 127, 0, 0, 1, 0, 53, 'h', 'i'},
		{0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 187},
		{0, 0, 0, 3, 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 53, 'q'},
		{0, 0, 1, 1, 1, 2, 3, 4, 0, 80},
		{0, 0, 0, 3, 0, 0, 53},
		{0, 0, 0, 9},
		{},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, payload, err := parseUDPHeader(b)
		if err != nil {
			return
		}
		n := len(b) - len(payload)
		if n < 0 || !bytes.Equal(payload, b[n:]) {
			t.Fatal("payload is not the rest of the datagram")
		}
		if h.name == nil {
			if b[3] == 1 || (b[3] == 4 && !netip.AddrFrom16([16]byte(b[4:20])).Is4In6()) {
				re := appendUDPHeader(nil, netip.AddrPortFrom(h.addr, h.port))
				if !bytes.Equal(re[3:], b[3:n]) {
					t.Fatalf("header % x re-encodes as % x", b[:n], re)
				}
			}
		} else if len(h.name) == 0 || len(h.name) != int(b[4]) {
			t.Fatalf("name %q, length byte %d", h.name, b[4])
		}
	})
}

package socks

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/rotor-proxy/rotor/dest"
	"github.com/rotor-proxy/rotor/internal/testkit"
	"github.com/rotor-proxy/rotor/pool"
)

// countingResolver fails every DNS query and counts them: a malformed
// domain must be refused before any query is sent.
func countingResolver(n *atomic.Int64) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		n.Add(1)
		return nil, errors.New("no DNS in tests")
	}}
}

func TestBadSOCKSInput(t *testing.T) {
	var queries atomic.Int64
	p, err := testkit.Pool([]netip.Addr{netip.MustParseAddr("127.0.0.2")}, pool.RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{Dialer: pool.NewDialer(p, pool.DialerOptions{Timeout: 5 * time.Second, Resolver: countingResolver(&queries),
		Policy: dest.NewPolicy(nil, nil)}),
		Access: testkit.Access(testkit.OneUser(user, pass)), HandshakeTimeout: 500 * time.Millisecond, Log: zerolog.Nop()})
	addr := serveOn(t, s)

	auth := append([]byte{5, 1, 2}, authMsg(user, pass)...)
	domain := func(name string) []byte {
		b := append([]byte{5, 1, 0, 3, byte(len(name))}, name...)
		return binary.BigEndian.AppendUint16(b, 80)
	}
	methods255 := func(with2 bool) []byte {
		b := []byte{5, 255}
		for i := 0; i < 255; i++ {
			m := byte(0x80 + i%0x7f)
			if with2 && i == 200 {
				m = 2
			}
			b = append(b, m)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		msg  []byte
		want []byte // exact bytes the server sends before closing
	}{
		{"version 4", []byte{4, 1, 0, 80, 127, 0, 0, 1, 0}, nil},
		{"version 0", []byte{0, 1, 0}, nil},
		{"zero methods", []byte{5, 0}, []byte{5, 0xff}},
		{"255 methods without 02", methods255(false), []byte{5, 0xff}},
		{"255 methods with 02, then good auth", append(methods255(true), authMsg(user, pass)...), []byte{5, 2, 1, 0}},
		{"RFC 1929 version 2", append([]byte{5, 1, 2, 2, 5}, "alice"...), []byte{5, 2}},
		{"empty user name", append([]byte{5, 1, 2}, authMsg("", pass)...), []byte{5, 2, 1, 1}},
		{"empty password", append([]byte{5, 1, 2}, authMsg(user, "")...), []byte{5, 2, 1, 1}},
		{"255-byte user name", append([]byte{5, 1, 2}, authMsg(string(bytes.Repeat([]byte("u"), 255)), pass)...), []byte{5, 2, 1, 1}},
		{"255-byte password", append([]byte{5, 1, 2}, authMsg(user, string(bytes.Repeat([]byte("p"), 255)))...), []byte{5, 2, 1, 1}},
		{"command 07", append(auth, 5, 7, 0, 1, 127, 0, 0, 1, 0, 80), []byte{5, 2, 1, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"ATYP 08", append(auth, 5, 1, 0, 8, 1, 2, 3, 4, 0, 80), []byte{5, 2, 1, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"empty domain", append(auth, domain("")...), []byte{5, 2, 1, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"NUL in domain", append(auth, domain("exa\x00mple.com")...), []byte{5, 2, 1, 0, 5, 4, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"forbidden destination", append(auth, 5, 1, 0, 1, 169, 254, 169, 254, 0, 80), []byte{5, 2, 1, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"forbidden by name", append(auth, domain("localhost")...), []byte{5, 2, 1, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"port 0", append(auth, 5, 1, 0, 1, 203, 0, 113, 9, 0, 0), []byte{5, 2, 1, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := exchange(t, addr, tc.msg)
			if !bytes.Equal(out, tc.want) {
				t.Fatalf("got % x, want % x", out, tc.want)
			}
		})
	}
	if n := queries.Load(); n != 0 {
		t.Fatalf("%d DNS queries sent for malformed or forbidden domains", n)
	}
	// Truncated messages then silence: closed at the handshake timeout,
	// while a good client is served (TestHandshakeDeadline covers timing).
	for _, partial := range [][]byte{{5, 2, 2}, append([]byte{5, 1, 2}, 1, 5, 'a', 'l'), append(auth, 5, 1, 0, 3, 10, 'e', 'x')} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(partial)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		buf := make([]byte, 64)
		var err2 error
		for err2 == nil {
			_, err2 = c.Read(buf)
		}
		c.Close()
		if errors.Is(err2, os.ErrDeadlineExceeded) || time.Since(start) > 3*time.Second {
			t.Fatalf("truncated % x: not closed at the 500ms handshake timeout (%v)", partial, err2)
		}
	}
}

// failingResolver answers /etc/hosts only and sends no query.
func failingResolver() *net.Resolver {
	var n atomic.Int64
	return countingResolver(&n)
}

package socks

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"
	"golang.org/x/net/proxy"

	"github.com/rotor-proxy/rotor/auth"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/internal/testkit"
	"github.com/rotor-proxy/rotor/pool"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const user, pass = "alice", "wonderland"

func startServer(t *testing.T, creds *auth.Live, handshake time.Duration) (*Server, string) {
	t.Helper()
	p, err := testkit.Pool([]netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")}, pool.RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{Dialer: pool.NewDialer(p, pool.DialerOptions{Timeout: 5 * time.Second, Resolver: target.OfflineResolver()}), Access: creds, HandshakeTimeout: handshake, Log: zerolog.Nop()})
	return s, serveOn(t, s)
}

// serveOn runs s on 127.0.0.1 until cleanup and returns its address.
func serveOn(t testing.TB, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ln) }()
	t.Cleanup(func() { closeNow(s); <-done })
	return ln.Addr().String()
}

// peerServer accepts connections and writes the peer's ip:port back.
func peerServer(t *testing.T) netip.AddrPort {
	t.Helper()
	s, err := target.TCP("127.0.0.1:0", target.WritePeerAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return netip.MustParseAddrPort(s.Addr)
}

// exchange writes msg and returns everything read until the server closes
// or 5 s pass.
func exchange(t *testing.T, addr string, msg []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(c)
	return out
}

func authMsg(u, p string) []byte {
	b := []byte{1, byte(len(u))}
	b = append(b, u...)
	b = append(b, byte(len(p)))
	return append(b, p...)
}

func connectIPv4(ap netip.AddrPort, cmd byte) []byte {
	ip := ap.Addr().As4()
	b := []byte{5, cmd, 0, 1, ip[0], ip[1], ip[2], ip[3], 0, 0}
	binary.BigEndian.PutUint16(b[8:], ap.Port())
	return b
}

func TestProtocol(t *testing.T) {
	_, addr := startServer(t, testkit.Access(testkit.OneUser(user, pass)), 5*time.Second)
	target := peerServer(t)
	greetAuth := append([]byte{5, 1, 2}, authMsg(user, pass)...)
	for _, tc := range []struct {
		name string
		msg  []byte
		want []byte // prefix of what the server sends
	}{
		{"no-auth only offered", []byte{5, 1, 0}, []byte{5, 0xff}},
		{"no methods", []byte{5, 0}, []byte{5, 0xff}},
		{"wrong password", append([]byte{5, 1, 2}, authMsg(user, "x")...), []byte{5, 2, 1, 1}},
		{"wrong user", append([]byte{5, 2, 0, 2}, authMsg("bob", pass)...), []byte{5, 2, 1, 1}},
		{"BIND", append(greetAuth, connectIPv4(target, 2)...), []byte{5, 2, 1, 0, 5, 7}},
		{"unknown ATYP", append(greetAuth, 5, 1, 0, 8, 1, 2, 3, 4), []byte{5, 2, 1, 0, 5, 8}},
		{"SOCKS4", []byte{4, 1, 0, 80, 127, 0, 0, 1, 0}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := exchange(t, addr, tc.msg)
			if !bytes.HasPrefix(out, tc.want) || (tc.want == nil && len(out) != 0) {
				t.Fatalf("got % x, want % x...", out, tc.want)
			}
		})
	}
	t.Run("connect replies with the bound address", func(t *testing.T) {
		out := exchange(t, addr, append(greetAuth, connectIPv4(target, 1)...))
		if len(out) < 14 || !bytes.Equal(out[:8], []byte{5, 2, 1, 0, 5, 0, 0, 1}) {
			t.Fatalf("got % x, want success with an IPv4 bound address", out)
		}
		bound := netip.AddrPortFrom(netip.AddrFrom4([4]byte(out[8:12])), binary.BigEndian.Uint16(out[12:14]))
		seen := netip.MustParseAddrPort(string(out[14:]))
		if bound != seen {
			t.Fatalf("reply says bound %s, target saw %s", bound, seen)
		}
		if a := bound.Addr().String(); a != "127.0.0.2" && a != "127.0.0.3" {
			t.Fatalf("bound %s is not a pool address", a)
		}
	})
}

func TestNoCredentials(t *testing.T) {
	_, addr := startServer(t, nil, 5*time.Second)
	target := peerServer(t)
	if out := exchange(t, addr, append([]byte{5, 1, 0}, connectIPv4(target, 1)...)); !bytes.HasPrefix(out, []byte{5, 0, 5, 0}) {
		t.Fatalf("no-auth: got % x", out)
	}
	// A client that offers only username/password is let in with any.
	msg := append(append([]byte{5, 1, 2}, authMsg("any", "thing")...), connectIPv4(target, 1)...)
	if out := exchange(t, addr, msg); !bytes.HasPrefix(out, []byte{5, 2, 1, 0, 5, 0}) {
		t.Fatalf("user/pass without credentials configured: got % x", out)
	}
}

// A client that stops mid-handshake is closed at the deadline, and other
// clients are served meanwhile.
func TestHandshakeDeadline(t *testing.T) {
	s, addr := startServer(t, testkit.Access(testkit.OneUser(user, pass)), 300*time.Millisecond)
	target := peerServer(t)
	for _, partial := range [][]byte{{}, {5}, {5, 1, 2}, {5, 1, 2, 1, 5, 'a'}, append([]byte{5, 1, 2}, authMsg(user, pass)...)} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = c.Write(partial)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		// A good client in parallel still gets through.
		d, _ := proxy.SOCKS5("tcp", addr, &proxy.Auth{User: user, Password: pass}, proxy.Direct)
		good, err := d.(proxy.ContextDialer).DialContext(context.Background(), "tcp", target.String())
		if err != nil {
			t.Fatalf("good client during a stalled handshake: %v", err)
		}
		good.Close()
		_, err = io.ReadAll(c)
		if err != nil {
			t.Fatalf("stalled after % x: read %v, want closed by the server", partial, err)
		}
		if waited := time.Since(start); waited > 4*time.Second {
			t.Fatalf("stalled after % x: closed after %s", partial, waited)
		}
	}
	if n := s.Active(); n > 0 {
		t.Logf("%d connections still closing", n)
	}
}

func TestReplyCodes(t *testing.T) {
	for _, tc := range []struct {
		class pool.Class
		want  byte
	}{
		{pool.ClassRefused, 5}, {pool.ClassNetUnreachable, 3}, {pool.ClassHostUnreachable, 4},
		{pool.ClassDNS, 4}, {pool.ClassTimeout, 4}, {pool.ClassNoSource, 4}, {pool.ClassOther, 1},
	} {
		if got := replyFor(tc.class); got != tc.want {
			t.Errorf("replyFor(%v) = %d, want %d", tc.class, got, tc.want)
		}
	}
}

// A domain target resolves through the pool's family; a name that does
// not resolve is 0x04.
func TestDomainTargets(t *testing.T) {
	_, addr := startServer(t, nil, 5*time.Second)
	target := peerServer(t)
	domain := func(name string, port uint16) []byte {
		b := []byte{5, 1, 0, 5, 1, 0, 3, byte(len(name))}
		b = append(b, name...)
		return binary.BigEndian.AppendUint16(b, port)
	}
	out := exchange(t, addr, domain("localhost", target.Port()))
	if !bytes.HasPrefix(out, []byte{5, 0, 5, 0}) {
		t.Fatalf("localhost: got % x", out)
	}
	out = exchange(t, addr, domain("no-such-host.invalid", 80))
	if !bytes.HasPrefix(out, []byte{5, 0, 5, 4}) {
		t.Fatalf("unresolvable: got % x, want reply 04", out)
	}
}

// closeNow shuts s down without a drain: every connection closes at once.
func closeNow(s *Server) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = s.Shutdown(ctx)
}

package socks

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/rotor-proxy/rotor/dest"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/internal/testkit"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
)

// newUDPEcho is a UDP server on 127.0.0.1 that answers each datagram
// with the sender's address, and counts what it received.
func newUDPEcho(t testing.TB) *target.UDPServer { return target.UDPPeer(t) }

// udpServer is a SOCKS5 server over a pool of four loopback addresses.
func udpServer(t testing.TB, set func(*Options)) (*Server, string, *logSink) {
	t.Helper()
	p, err := testkit.Pool([]netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"),
		netip.MustParseAddr("127.0.0.4"), netip.MustParseAddr("127.0.0.5")}, pool.RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logSink{}
	o := Options{Dialer: pool.NewDialer(p, pool.DialerOptions{Timeout: 5 * time.Second, Resolver: target.OfflineResolver()}),
		Access: testkit.Access(testkit.OneUser(user, pass)), Log: zerolog.New(logs), Hits: &serve.Hits{}}
	if set != nil {
		set(&o)
	}
	s := New(o)
	return s, serveOn(t, s), logs
}

type logSink struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// assoc is a client's UDP association: its control connection, the relay
// address the reply named, and the client's own UDP socket.
type assoc struct {
	ctl   net.Conn
	relay netip.AddrPort
	udp   *net.UDPConn
}

// associate opens a UDP association as name with the client's UDP socket
// on 127.0.0.1.
func associate(t testing.TB, proxy, name string) *assoc {
	t.Helper()
	ctl, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	_ = ctl.SetDeadline(time.Now().Add(5 * time.Second))
	msg := append([]byte{5, 1, 2}, authMsg(name, pass)...)
	msg = append(msg, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0) // client address and port not known yet
	if _, err := ctl.Write(msg); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 2+2+10)
	if _, err := io.ReadFull(ctl, reply); err != nil {
		t.Fatalf("UDP ASSOCIATE reply: %v", err)
	}
	if !bytes.Equal(reply[:8], []byte{5, 2, 1, 0, 5, 0, 0, 1}) {
		t.Fatalf("UDP ASSOCIATE reply % x, want success with an IPv4 relay address", reply)
	}
	_ = ctl.SetDeadline(time.Time{})
	relay := netip.AddrPortFrom(netip.AddrFrom4([4]byte(reply[8:12])), binary.BigEndian.Uint16(reply[12:14]))
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return &assoc{ctl: ctl, relay: relay, udp: u}
}

// send sends payload to dst through the association, with frag as FRAG.
func (a *assoc) send(t testing.TB, dst netip.AddrPort, frag byte, payload []byte) {
	t.Helper()
	b := appendUDPHeader(nil, dst)
	b[2] = frag
	if _, err := a.udp.WriteToUDPAddrPort(append(b, payload...), a.relay); err != nil {
		t.Fatal(err)
	}
}

// recv returns the next reply's source and payload, or ok false after
// wait.
func (a *assoc) recv(t testing.TB, wait time.Duration) (from netip.AddrPort, payload []byte, ok bool) {
	t.Helper()
	_ = a.udp.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 65536)
	n, _, err := a.udp.ReadFromUDPAddrPort(buf)
	if err != nil {
		return from, nil, false
	}
	h, p, err := parseUDPHeader(buf[:n])
	if err != nil || h.frag != 0 || h.name != nil {
		t.Fatalf("reply header % x: %v", buf[:n], err)
	}
	return netip.AddrPortFrom(h.addr, h.port), p, true
}

// roundTrip sends one datagram to an echo and returns the address it saw.
func (a *assoc) roundTrip(t *testing.T, e *target.UDPServer) string {
	t.Helper()
	a.send(t, e.Addr, 0, []byte("ping"))
	from, p, ok := a.recv(t, 5*time.Second)
	if !ok {
		t.Fatal("no reply through the association")
	}
	if from != e.Addr {
		t.Fatalf("reply header names %s, want the destination %s", from, e.Addr)
	}
	return string(p)
}

// Each association takes one egress, by the pool's strategy: 100
// associations over four addresses, 25 each; one association reaches
// several destinations from one address; a session pins TCP and UDP to
// one address.
func TestUDPAssociateRotates(t *testing.T) {
	_, proxy, _ := udpServer(t, nil)
	e := newUDPEcho(t)
	seen := map[string]int{}
	for range 100 {
		a := associate(t, proxy, user)
		seen[a.roundTrip(t, e)]++
		a.ctl.Close()
		a.udp.Close()
	}
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"} {
		if seen[ip] != 25 {
			t.Errorf("%s carried %d associations, want 25 (all: %v)", ip, seen[ip], seen)
		}
	}

	a := associate(t, proxy, user)
	echoes := []*target.UDPServer{e, newUDPEcho(t), newUDPEcho(t)}
	srcs := map[string]bool{}
	for range 3 {
		for _, x := range echoes {
			srcs[a.roundTrip(t, x)] = true
		}
	}
	if len(srcs) != 1 {
		t.Errorf("one association left from %v, want one address", srcs)
	}

	pinned := map[string]bool{}
	for range 4 {
		pinned[associate(t, proxy, user+"-session-k1").roundTrip(t, e)] = true
	}
	ctl, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	peer := peerServer(t)
	out := exchange(t, proxy, append(append([]byte{5, 1, 2}, authMsg(user+"-session-k1", pass)...), connectIPv4(peer, 1)...))
	if len(out) > 14 {
		pinned[netip.MustParseAddrPort(string(out[14:])).Addr().String()] = true
	}
	if len(pinned) != 1 {
		t.Errorf("session k1 over UDP and TCP left from %v, want one address", pinned)
	}
}

// What the association does not relay: datagrams from another client
// address, fragments, and destinations the policy refuses (logged once).
func TestUDPDrops(t *testing.T) {
	_, proxy, logs := udpServer(t, func(o *Options) {
		o.Dialer = pool.NewDialer(o.Dialer.Pool(), pool.DialerOptions{Timeout: 5 * time.Second, Resolver: target.OfflineResolver(),
			Policy: dest.NewPolicy([]netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, nil)})
	})
	e := newUDPEcho(t)
	a := associate(t, proxy, user)
	a.roundTrip(t, e) // pins the client's port

	// Another address (127.0.0.9) sending to the relay reaches nothing.
	other, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 9)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.WriteToUDPAddrPort(append(appendUDPHeader(nil, e.Addr), "x"...), a.relay); err != nil {
		t.Fatal(err)
	}
	a.send(t, e.Addr, 1, []byte("fragment"))
	forbidden := netip.MustParseAddrPort("127.0.0.8:" + strings.Split(e.Addr.String(), ":")[1])
	a.send(t, forbidden, 0, []byte("forbidden"))
	a.send(t, forbidden, 0, []byte("forbidden again"))
	// A datagram behind them is still relayed, and nothing else was.
	if got := a.roundTrip(t, e); got == "" {
		t.Fatal("association stopped relaying")
	}
	if n := int(e.Count.Load()); n != 2 {
		t.Errorf("echo received %d datagrams, want the 2 allowed ones", n)
	}
	if _, _, ok := a.recv(t, 100*time.Millisecond); ok {
		t.Error("a dropped datagram was answered")
	}
	l := logs.String()
	if strings.Count(l, `"drop":"forbidden"`) != 1 || !strings.Contains(l, "127.0.0.8") {
		t.Errorf("forbidden destination not logged once:\n%s", l)
	}
}

// A flood at an association's relay from a foreign address, read and
// dropped by the loop, reaches no client and does not stop another
// association on the same loop (whose turns udploop's TestReadyTakeTurns
// shows): it answers every round trip, each with its own echo.
func TestUDPFloodReachesNoOne(t *testing.T) {
	_, proxy, _ := udpServer(t, func(o *Options) { o.UDPLoops = 1 })
	e := newUDPEcho(t)
	flooded := associate(t, proxy, user)
	flooded.roundTrip(t, e) // pins its client's port: the flood is foreign
	victim := associate(t, proxy, user)
	victim.roundTrip(t, e)

	attacker, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 9)})
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	stop := make(chan struct{})
	var sent atomic.Int64
	flooding := make(chan struct{})
	go func() {
		defer close(flooding)
		msg := append(appendUDPHeader(nil, e.Addr), make([]byte, 64)...)
		for i := 0; i < 2_000_000; i++ { // bounded: the victim ends it long before
			select {
			case <-stop:
				return
			default:
			}
			if _, err := attacker.WriteToUDPAddrPort(msg, flooded.relay); err == nil {
				sent.Add(1)
			}
		}
	}()
	for range 200 {
		victim.roundTrip(t, e)
	}
	close(stop)
	<-flooding
	if sent.Load() < 1000 {
		t.Fatalf("the flood sent only %d datagrams", sent.Load())
	}
	if _, _, ok := flooded.recv(t, 100*time.Millisecond); ok {
		t.Error("the flooded association's client received a datagram")
	}
	if n := e.Count.Load(); n != 202 {
		t.Errorf("echo received %d datagrams, want the clients' 202", n)
	}
	t.Logf("200 round trips while %d datagrams flooded the other association", sent.Load())
}

// The association ends when its control connection closes and when it
// idles; its sockets close with it and the user's slot comes back.
func TestUDPAssociationEnds(t *testing.T) {
	s, proxy, logs := udpServer(t, func(o *Options) { o.UDPIdleTimeout = 300 * time.Millisecond })
	e := newUDPEcho(t)
	// The server's UDP loops (an epoll set and an eventfd each) start with
	// its first association and stay: count descriptors after one.
	w := associate(t, proxy, user)
	w.roundTrip(t, e)
	w.ctl.Close()
	w.udp.Close()
	waitUntil(t, time.Second, func() bool { return s.Active() == 0 }, "first association ended")
	fds := openFDs(t)
	a := associate(t, proxy, user)
	a.roundTrip(t, e)
	a.ctl.Close()
	waitUntil(t, time.Second, func() bool { return s.Active() == 0 }, "association ended after its control connection closed")

	b := associate(t, proxy, user)
	b.roundTrip(t, e)
	waitUntil(t, 5*time.Second, func() bool { return s.Active() == 0 }, "association ended after idling")
	if _, err := io.ReadAll(b.ctl); err != nil {
		t.Errorf("control connection after the idle timeout: %v, want EOF", err)
	}
	if n := s.opts.Hits.Load(serve.UDPIdleTimeout); n != 1 {
		t.Errorf("udp-idle-timeout counted %d times, want 1", n)
	}
	l := logs.String()
	if strings.Count(l, `"reason":"udp-idle-timeout"`) != 1 || strings.Count(l, `"reason":"control-closed"`) != 2 ||
		!strings.Contains(l, `"datagrams_up":1`) {
		t.Errorf("association log lines:\n%s", l)
	}
	s.udpMu.Lock()
	held := len(s.udpHeld)
	s.udpMu.Unlock()
	if held != 0 {
		t.Errorf("%d users still hold associations", held)
	}
	// Every socket of both associations is closed, the clients' too.
	a.udp.Close()
	b.udp.Close()
	b.ctl.Close()
	waitUntil(t, time.Second, func() bool { return openFDs(t) == fds }, "descriptors back to where they were")
}

// openFDs is how many descriptors this process has open.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// Shutdown drains associations with the rest: a live association ends
// when the drain time is up, and Shutdown returns.
func TestUDPShutdownDrains(t *testing.T) {
	p, err := testkit.Pool([]netip.Addr{netip.MustParseAddr("127.0.0.2")}, pool.RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{Dialer: pool.NewDialer(p, pool.DialerOptions{Timeout: 5 * time.Second}), Access: testkit.Access(testkit.OneUser(user, pass)),
		Log: zerolog.Nop()})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = s.Serve(ln) }()
	a := associate(t, ln.Addr().String(), user)
	a.roundTrip(t, newUDPEcho(t))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with a live association: %v, want the drain to time out", err)
	}
	<-served
	if _, err := io.ReadAll(a.ctl); err != nil {
		t.Errorf("control connection after shutdown: %v, want EOF", err)
	}
	if s.Active() != 0 {
		t.Errorf("%d connections after shutdown", s.Active())
	}
}

// waitUntil polls cond for up to d.
func waitUntil(t *testing.T, d time.Duration, cond func() bool, what string) {
	t.Helper()
	for end := time.Now().Add(d); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("not within %s: %s", d, what)
		}
	}
}

// A DNS query over SOCKS5 UDP, by name of the DNS server's host as ATYP 3
// would be, gets its answer.
func TestUDPDNSQuery(t *testing.T) {
	_, proxy, _ := udpServer(t, nil)
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 512)
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, _ := p.Question()
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true})
			_ = b.StartQuestions()
			_ = b.Question(q)
			_ = b.StartAnswers()
			_ = b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60},
				dnsmessage.AResource{A: [4]byte{192, 0, 2, 53}})
			msg, _ := b.Finish()
			_, _ = srv.WriteToUDPAddrPort(msg, from)
		}
	}()
	defer func() { srv.Close(); <-done }()

	a := associate(t, proxy, user)
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 4711, RecursionDesired: true})
	_ = b.StartQuestions()
	_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName("rotor.test."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	query, _ := b.Finish()
	// By name: "localhost" resolves (from /etc/hosts) in the source's family.
	port := srv.LocalAddr().(*net.UDPAddr).Port
	hdr := append([]byte{0, 0, 0, 3, byte(len("localhost"))}, "localhost"...)
	hdr = binary.BigEndian.AppendUint16(hdr, uint16(port))
	if _, err := a.udp.WriteToUDPAddrPort(append(hdr, query...), a.relay); err != nil {
		t.Fatal(err)
	}
	_, resp, ok := a.recv(t, 5*time.Second)
	if !ok {
		t.Fatal("no DNS answer through the association")
	}
	var p dnsmessage.Parser
	h, err := p.Start(resp)
	if err != nil || h.ID != 4711 {
		t.Fatalf("answer %v, %v", h, err)
	}
	_ = p.SkipAllQuestions()
	ans, err := p.AnswerHeader()
	if err != nil || ans.Type != dnsmessage.TypeA {
		t.Fatalf("answer: %v %v", ans, err)
	}
	r, _ := p.AResource()
	if r.A != [4]byte{192, 0, 2, 53} {
		t.Fatalf("A %v", r.A)
	}
}

// Associations per user are capped; over the cap the request gets 0x01.
func TestUDPAssociationsPerUser(t *testing.T) {
	_, proxy, _ := udpServer(t, func(o *Options) { o.UDPPerUser = 8 })
	var held []*assoc
	for range 8 {
		held = append(held, associate(t, proxy, user))
	}
	out := exchange(t, proxy, append(append([]byte{5, 1, 2}, authMsg(user, pass)...), 5, 3, 0, 1, 0, 0, 0, 0, 0, 0))
	if !bytes.HasPrefix(out, []byte{5, 2, 1, 0, 5, 1}) {
		t.Fatalf("association over the cap: % x, want reply 01", out)
	}
	for _, a := range held {
		a.ctl.Close()
	}
}

// A name whose lookup stalls holds up only the datagrams to it: a datagram
// to an address literal sent after it, on the same association, is
// answered while the lookup still waits, and so is another association's
// (the loop never waits on DNS). Ending the association stops its lookups.
func TestUDPSlowLookupHoldsUpNothingElse(t *testing.T) {
	lookups := make(chan struct{}, 64)
	stalling := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		lookups <- struct{}{}
		<-ctx.Done() // until the association ends
		return nil, ctx.Err()
	}}
	s, proxy, _ := udpServer(t, func(o *Options) {
		o.Dialer = pool.NewDialer(o.Dialer.Pool(), pool.DialerOptions{Timeout: 5 * time.Second, Resolver: stalling})
	})
	e := newUDPEcho(t)
	a := associate(t, proxy, user)
	for i := range maxResolving + 1 { // the last one over the cap is dropped at once
		b := appendUDPHeaderName(nil, fmt.Sprintf("slow%d.example", i), e.Addr.Port())
		if _, err := a.udp.WriteToUDPAddrPort(append(b, "by name"...), a.relay); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-lookups:
	case <-time.After(5 * time.Second):
		t.Fatal("no lookup started")
	}
	// Well inside the 5 s a lookup may take: a loop that waited on it
	// would answer only after.
	a.send(t, e.Addr, 0, []byte("by address"))
	if _, _, ok := a.recv(t, 3*time.Second); !ok {
		t.Fatal("a datagram to an address waited on another destination's lookup")
	}
	other := associate(t, proxy, user)
	other.roundTrip(t, e)
	a.ctl.Close()
	other.ctl.Close()
	waitUntil(t, 5*time.Second, func() bool { return s.Active() == 0 }, "associations ended with their lookups")
}

// appendUDPHeaderName appends a SOCKS5 UDP header naming host (ATYP 3).
func appendUDPHeaderName(dst []byte, host string, port uint16) []byte {
	dst = append(dst, 0, 0, 0, 3, byte(len(host)))
	dst = append(dst, host...)
	return binary.BigEndian.AppendUint16(dst, port)
}

package socks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/things-go/go-socks5/statute"

	"github.com/rotor-proxy/rotor/metrics"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
	"github.com/rotor-proxy/rotor/udploop"
)

// UDP ASSOCIATE limits.
const (
	// DefaultUDPIdleTimeout ends an association with no datagram either
	// way for this long, when Options says nothing.
	DefaultUDPIdleTimeout = 2 * time.Minute
	// maxDatagram caps a datagram, header included: UDP's own limit.
	maxDatagram = 64 << 10
	// DefaultUDPPerUser caps the associations one user (or, without a
	// user, one client address) holds at once, when Options says nothing:
	// each holds two UDP sockets besides its control connection.
	DefaultUDPPerUser = 1024
	// maxNames caps the names an association keeps resolved, and
	// maxRefusedLogged the refused destinations it logs one line for.
	maxNames         = 256
	maxRefusedLogged = 16
	// policyRecheck is how long a destination's policy check holds for
	// the datagrams that follow to it (the host's addresses may change).
	policyRecheck = time.Second
	// maxResolving caps the names an association resolves at once (a few:
	// each is a DNS query a client can make the server send), and
	// maxWaitingBytes the datagrams it holds for them meanwhile.
	maxResolving    = 4
	maxWaitingBytes = 256 << 10
	// destHead is the room in front of a destination's datagram for the
	// SOCKS5 UDP header naming it (IPv6: 4 + 16 + 2 bytes).
	destHead = 22
)

var (
	errAssociationLimit = errors.New("too many UDP associations for this user")
	errUDPIdle          = errors.New("UDP association idle")
	errControlClosed    = errors.New("control connection closed")
	errUpstreamClosed   = errors.New("the upstream closed its control connection")
)

// association is one UDP ASSOCIATE: a relay socket the client sends to, a
// socket bound to the chosen egress that every destination sees, and the
// TCP control connection whose end ends it (RFC 1928 section 7).
//
// Both sockets belong to one udploop.Loop, whose goroutine runs the
// handlers (toDestination and fromDestinations, or fromUpstream) one at a
// time: the fields marked "loop only" need no lock. The connection's own
// goroutine watches the control connection and the idle timeout.
type association struct {
	s      *Server
	ss     *session
	eg     pool.Egress
	m      *metrics.Source
	ctl    net.Conn
	loop   *udploop.Loop
	relay  *udploop.Socket // client side, on the address the client reached
	out    *udploop.Socket // bound to the egress
	ctx    context.Context // ends with the association: name lookups stop
	cancel context.CancelFunc
	// up is the association on a SOCKS5 upstream entry, when the egress
	// is one: datagrams go to its relay with their headers, as the client
	// wrote them, and its replies come back with theirs.
	up *pool.UpstreamUDP

	clientIP netip.Addr                     // only datagrams from it are taken
	client   atomic.Pointer[netip.AddrPort] // pinned: declared, or the first datagram's source

	last                 atomic.Int64 // unix nanos of the last datagram either way
	sent, recv           atomic.Int64 // datagrams
	sentBytes, recvBytes atomic.Int64
	dropped              atomic.Int64
	names                map[string]netip.Addr // resolved in the source's family; loop only
	refused              map[netip.AddrPort]struct{}
	dests                map[netip.AddrPort]struct{}
	destOverflow         bool
	// lastDst was allowed by the policy at lastChecked (unix nanos): a
	// stream to one destination is checked again every policyRecheck,
	// not per datagram. Loop only.
	lastDst     netip.AddrPort
	lastChecked int64
	// waiting holds datagrams to names being resolved, waitingBytes their
	// size; lookups are the goroutines resolving them. Loop only, but for
	// lookups.Wait once the sockets are closed.
	waiting      map[string][]waitingDatagram
	waitingBytes int
	lookups      sync.WaitGroup
	endOnce      sync.Once
	why          error
}

// waitingDatagram is a payload held until its destination's name resolves.
type waitingDatagram struct {
	port    uint16
	payload []byte
}

// associate serves a UDP ASSOCIATE request after the handshake, until the
// control connection closes or the association idles; it runs on the
// connection's worker goroutine, which watches the control connection
// while a loop moves the datagrams, and ends the session.
func (s *Server) associate(c net.Conn, ss *session, req statute.Request, start time.Time) {
	release, err := s.holdAssociation(ss, c)
	if err != nil {
		ss.err = s.fail(c, ss, repGeneralFailure, err)
		s.end(c, nil, ss, start)
		return
	}
	a, err := s.openAssociation(c, ss, req)
	if err != nil {
		release()
		ss.err = err
		s.end(c, nil, ss, start)
		return
	}
	a.m.UDPOpened()
	var wg sync.WaitGroup
	if err := a.serve(); err != nil {
		a.end(err)
	} else if a.up != nil {
		wg.Add(1)
		s.Acc.Go(func() { defer wg.Done(); a.watchUpstream() })
	}
	a.watchControl()
	wg.Wait()
	// end has closed both sockets: no handler runs from here on, and no
	// lookup starts.
	a.lookups.Wait()
	a.m.UDPClosed()
	ss.stats.Up, ss.stats.Down = a.sentBytes.Load(), a.recvBytes.Load()
	ss.err = a.why
	// The user's association slot comes back and the line is logged
	// before end takes the connection off the tracker.
	release()
	a.log(time.Since(start))
	s.end(c, nil, ss, start)
}

// holdAssociation counts an association against its user's (or client
// address's) cap; release gives it back.
func (s *Server) holdAssociation(ss *session, c net.Conn) (release func(), err error) {
	key := ss.user
	if ss.usr == nil {
		key = "client " + clientAddr(c).String()
	}
	s.udpMu.Lock()
	defer s.udpMu.Unlock()
	if s.udpHeld[key] >= s.opts.UDPPerUser {
		return nil, fmt.Errorf("%w (%d)", errAssociationLimit, s.opts.UDPPerUser)
	}
	if s.udpHeld == nil {
		s.udpHeld = map[string]int{}
	}
	s.udpHeld[key]++
	return func() {
		s.udpMu.Lock()
		defer s.udpMu.Unlock()
		if s.udpHeld[key]--; s.udpHeld[key] == 0 {
			delete(s.udpHeld, key)
		}
	}, nil
}

// openAssociation chooses the egress, opens both sockets on one loop and
// sends the reply naming the relay socket.
func (s *Server) openAssociation(c net.Conn, ss *session, req statute.Request) (*association, error) {
	eg, outConn, up, m, err := s.egressUDP(c, ss)
	if err != nil {
		return nil, err
	}
	relay, out, err := s.adoptSockets(c, outConn)
	if err != nil {
		closeEgress(nil, up)
		return nil, s.fail(c, ss, repGeneralFailure, err)
	}
	if err := writeReply(c, statute.RepSuccess, net.UDPAddrFromAddrPort(relay.LocalAddr())); err != nil {
		closeEgress(nil, up)
		relay.Close()
		out.Close()
		return nil, fmt.Errorf("success reply: %w", err)
	}
	ss.reply = statute.RepSuccess
	a := &association{s: s, ss: ss, eg: eg, m: m, ctl: c, loop: relay.Loop(), relay: relay, out: out, up: up,
		clientIP: clientAddr(c).Unmap(), names: map[string]netip.Addr{}, refused: map[netip.AddrPort]struct{}{},
		dests: map[netip.AddrPort]struct{}{}, waiting: map[string][]waitingDatagram{}}
	a.ctx, a.cancel = context.WithCancel(s.Ctx)
	// A client that declared the port it will send from is held to it;
	// otherwise the first datagram's port is pinned.
	if req.DstAddr.Port != 0 {
		declared := netip.AddrPortFrom(a.clientIP, uint16(req.DstAddr.Port))
		a.client.Store(&declared)
	}
	a.touch()
	return a, nil
}

// adoptSockets opens the relay socket, on the address the client reached
// us on (so the reply's BND.ADDR is one the client can send to), and hands
// it and the egress socket out to one loop of the server's.
func (s *Server) adoptSockets(c net.Conn, outConn *net.UDPConn) (relay, out *udploop.Socket, err error) {
	loop, err := s.udp.Next()
	if err != nil {
		outConn.Close()
		return nil, nil, fmt.Errorf("UDP relay: %w", err)
	}
	if out, err = loop.Adopt(outConn); err != nil {
		return nil, nil, fmt.Errorf("UDP egress socket: %w", err)
	}
	local := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr()
	relayConn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err == nil {
		relay, err = loop.Adopt(relayConn)
	}
	if err != nil {
		out.Close()
		return nil, nil, fmt.Errorf("UDP relay socket: %w", err)
	}
	return relay, out, nil
}

// serve starts the loop reading both sockets.
func (a *association) serve() error {
	if a.up != nil {
		if err := a.out.Serve(0, a.fromUpstream); err != nil {
			return err
		}
	} else if err := a.out.Serve(destHead, a.fromDestinations); err != nil {
		return err
	}
	return a.relay.Serve(0, a.toDestination)
}

// egressUDP chooses the association's egress and opens its socket: one
// bound to a local source, or an association on a SOCKS5 upstream entry
// (up set; out is then its socket). An upstream that turns out not to
// relay UDP is passed over for the next entry. On error the client has
// had its reply.
func (s *Server) egressUDP(c net.Conn, ss *session) (pool.Egress, *net.UDPConn, *pool.UpstreamUDP, *metrics.Source, error) {
	for attempt := 0; ; attempt++ {
		eg, err := s.opts.Dialer.ChooseUDP(s.Ctx, ss.sticky)
		ss.src = eg.Src
		m := s.opts.Metrics.Source(eg.Src)
		if err != nil {
			m.Request(metrics.SOCKS5, err)
			if pool.Classify(err) == pool.ClassRateLimited {
				ss.limit = serve.PerIPRate
			}
			return eg, nil, nil, m, s.fail(c, ss, replyFor(pool.Classify(err)), err)
		}
		if eg.Src.Up == nil {
			m.Request(metrics.SOCKS5, nil)
			out, err := s.opts.Dialer.OpenUDP(s.Ctx, eg)
			if err != nil {
				return eg, nil, nil, m, s.fail(c, ss, repGeneralFailure, err)
			}
			return eg, out, nil, m, nil
		}
		up, err := s.opts.Dialer.OpenUDPUpstream(s.Ctx, eg)
		if errors.Is(err, pool.ErrUpstreamNoUDP) && attempt < 4 {
			continue // remembered: ChooseUDP passes over it from now on
		}
		m.Request(metrics.SOCKS5, err)
		if err != nil {
			return eg, nil, nil, m, s.fail(c, ss, replyFor(pool.Classify(err)), err)
		}
		return eg, up.Conn, up, m, nil
	}
}

// closeEgress closes an association's egress socket, when the loop holds
// it, and its upstream's control connection when it has one.
func closeEgress(out *udploop.Socket, up *pool.UpstreamUDP) {
	if up != nil {
		up.Ctl.Close()
	}
	if out != nil {
		out.Close()
	}
}

func (a *association) touch() { a.last.Store(time.Now().UnixNano()) }

// end closes the association once, recording why: both sockets (waiting
// until the loop is done with them), the upstream's control connection
// and the client's. Never called on the loop's goroutine.
func (a *association) end(why error) {
	a.endOnce.Do(func() {
		a.why = why
		a.cancel()
		a.relay.Close()
		closeEgress(a.out, a.up)
		a.ctl.Close()
	})
}

// watchControl ends the association when the client closes (or resets)
// its control connection, or when it idles; anything the client sends
// there is discarded. The read deadline is when the association would
// idle out; it is not moved on every datagram (that would cost the loop a
// timer update each): when it passes, the last activity either way sets
// it again, or ends the association.
func (a *association) watchControl() {
	for {
		_ = a.ctl.SetReadDeadline(time.Unix(0, a.last.Load()).Add(a.s.opts.UDPIdleTimeout))
		_, err := io.Copy(io.Discard, a.ctl)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if time.Since(time.Unix(0, a.last.Load())) < a.s.opts.UDPIdleTimeout {
				continue
			}
			err = errUDPIdle
		}
		if err == nil {
			err = errControlClosed
		}
		a.end(err)
		return
	}
}

// toDestination relays a client's datagram to its destination (loop).
func (a *association) toDestination(b []byte, _ int, from netip.AddrPort) {
	if from.Addr().Unmap() != a.clientIP {
		a.drop(metrics.DropForeign)
		return
	}
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	if pinned := a.client.Load(); pinned == nil {
		a.client.Store(&from)
	} else if *pinned != from {
		a.drop(metrics.DropForeign)
		return
	}
	if len(b) > maxDatagram {
		a.drop(metrics.DropTooLarge)
		return
	}
	h, payload, err := parseUDPHeader(b)
	switch {
	case err != nil:
		a.drop(metrics.DropMalformed)
		return
	case h.frag != 0:
		a.drop(metrics.DropFragmented)
		return
	}
	now := time.Now().UnixNano()
	a.last.Store(now)
	if a.up != nil {
		a.toUpstream(b, h, len(payload), now)
		return
	}
	ip := h.addr
	if h.name != nil {
		var ok bool
		if ip, ok = a.names[string(h.name)]; !ok {
			a.resolveThenSend(string(h.name), h.port, payload)
			return
		}
	}
	a.send(netip.AddrPortFrom(ip, h.port), payload, now)
}

// send sends a payload to dst from the egress socket, after the
// destination policy (loop).
func (a *association) send(dst netip.AddrPort, payload []byte, now int64) {
	if dst != a.lastDst || now-a.lastChecked >= int64(policyRecheck) {
		if err := a.s.opts.Dialer.CheckUDP(a.eg, dst); err != nil {
			a.lastDst = netip.AddrPort{}
			a.refuse(dst, err)
			return
		}
		if _, seen := a.dests[dst]; !seen {
			if len(a.dests) < 4096 {
				a.dests[dst] = struct{}{}
			} else {
				a.destOverflow = true
			}
		}
		a.lastDst, a.lastChecked = dst, now
	}
	if err := a.out.WriteTo(payload, dst); err != nil {
		a.drop(metrics.DropSend)
		return
	}
	a.sent.Add(1)
	a.sentBytes.Add(int64(len(payload)))
	a.m.UDPSent(len(payload))
}

// toUpstream sends a client's datagram b, header and all, to the upstream
// association's relay: the upstream resolves names and sends it on. A
// literal destination meets the destination policy first (cached as for
// a direct association), a name the upstream name check.
func (a *association) toUpstream(b []byte, h udpHeader, payloadLen int, now int64) {
	if h.name != nil {
		if err := a.s.opts.Dialer.CheckUpstreamName(string(h.name), h.port); err != nil {
			a.refuse(netip.AddrPortFrom(netip.IPv4Unspecified(), h.port), err)
			return
		}
	} else if dst := netip.AddrPortFrom(h.addr, h.port); dst != a.lastDst || now-a.lastChecked >= int64(policyRecheck) {
		if err := a.s.opts.Dialer.CheckUDP(a.eg, dst); err != nil {
			a.lastDst = netip.AddrPort{}
			a.refuse(dst, err)
			return
		}
		if _, seen := a.dests[dst]; !seen && len(a.dests) < 4096 {
			a.dests[dst] = struct{}{}
		}
		a.lastDst, a.lastChecked = dst, now
	}
	if err := a.out.WriteTo(b, a.up.Relay); err != nil {
		a.drop(metrics.DropSend)
		return
	}
	a.sent.Add(1)
	a.sentBytes.Add(int64(payloadLen))
	a.m.UDPSent(payloadLen)
}

// fromUpstream relays the upstream association's replies to the client as
// they come, each with the header naming its source; datagrams from any
// other address, or that do not parse, are dropped (loop).
func (a *association) fromUpstream(b []byte, _ int, from netip.AddrPort) {
	if netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != a.up.Relay {
		a.drop(metrics.DropForeign)
		return
	}
	h, payload, err := parseUDPHeader(b)
	switch {
	case err != nil || len(b) > maxDatagram:
		a.drop(metrics.DropMalformed)
		return
	case h.frag != 0:
		a.drop(metrics.DropFragmented)
		return
	}
	client := a.client.Load()
	if client == nil {
		return
	}
	a.touch()
	if err := a.relay.WriteTo(b, *client); err != nil {
		a.drop(metrics.DropSend)
		return
	}
	a.recv.Add(1)
	a.recvBytes.Add(int64(len(payload)))
	a.m.UDPReceived(len(payload))
}

// watchUpstream ends the association when the upstream closes its control
// connection: its relay is gone with it.
func (a *association) watchUpstream() {
	_, err := io.Copy(io.Discard, a.up.Ctl)
	if err == nil {
		err = errUpstreamClosed
	}
	a.end(err)
}

// resolveThenSend holds a datagram to a name not resolved yet and, if no
// lookup of it is running, starts one (in the source's family): the loop
// must not wait on DNS, which would stall every association on it. The
// datagrams held go out in order when the answer comes; they are dropped
// if it does not, or beyond the caps on lookups and bytes held (loop).
func (a *association) resolveThenSend(name string, port uint16, payload []byte) {
	q, running := a.waiting[name]
	if (!running && len(a.waiting) >= maxResolving) || a.waitingBytes+len(payload) > maxWaitingBytes {
		a.drop(metrics.DropUnresolved)
		return
	}
	a.waiting[name] = append(q, waitingDatagram{port: port, payload: bytes.Clone(payload)})
	a.waitingBytes += len(payload)
	if running {
		return
	}
	a.lookups.Add(1)
	go func() {
		defer a.lookups.Done()
		ctx, cancel := context.WithTimeout(a.ctx, 5*time.Second)
		ip, err := a.s.opts.Dialer.ResolveUDP(ctx, a.eg, name)
		cancel()
		a.loop.Post(func() { a.resolved(name, ip, err) })
	}()
}

// resolved sends the datagrams held for name to its address, and keeps
// the address for the association's later datagrams (loop).
func (a *association) resolved(name string, ip netip.Addr, err error) {
	q := a.waiting[name]
	delete(a.waiting, name)
	for _, d := range q {
		a.waitingBytes -= len(d.payload)
	}
	if err != nil {
		for range q {
			a.drop(metrics.DropUnresolved)
		}
		return
	}
	if len(a.names) < maxNames {
		a.names[name] = ip
	}
	now := time.Now().UnixNano()
	for _, d := range q {
		a.send(netip.AddrPortFrom(ip, d.port), d.payload, now)
	}
}

// refuse drops a datagram for a refused destination, logging the first
// few destinations refused.
func (a *association) refuse(dst netip.AddrPort, err error) {
	d := metrics.DropFamily
	if pool.Classify(err) == pool.ClassForbidden {
		d = metrics.DropForbidden
	}
	a.drop(d)
	if _, logged := a.refused[dst]; logged || len(a.refused) >= maxRefusedLogged {
		return
	}
	a.refused[dst] = struct{}{}
	a.s.opts.Log.Warn().Str("proto", "socks5-udp").Str("client", a.ctl.RemoteAddr().String()).
		Stringer("target", dst).Str("drop", d.String()).Err(err).Msg("datagram dropped")
}

func (a *association) drop(d metrics.Drop) {
	a.dropped.Add(1)
	a.m.UDPDropped(d)
}

// fromDestinations relays a destination's datagram to the client, with
// the header naming the destination it came from (loop).
func (a *association) fromDestinations(buf []byte, head int, from netip.AddrPort) {
	client := a.client.Load()
	if client == nil {
		return // nothing was sent yet: no one to answer
	}
	a.touch()
	payload := buf[head:]
	var room [destHead]byte
	hdr := appendUDPHeader(room[:0], from)
	// The header goes right before the payload, in the same buffer.
	start := head - len(hdr)
	copy(buf[start:], hdr)
	if err := a.relay.WriteTo(buf[start:], *client); err != nil {
		a.drop(metrics.DropSend)
		return
	}
	a.recv.Add(1)
	a.recvBytes.Add(int64(len(payload)))
	a.m.UDPReceived(len(payload))
}

// log writes the association's one line when it ends.
func (a *association) log(d time.Duration) {
	e := a.s.opts.Log.Info()
	if !e.Enabled() {
		return
	}
	e = a.ss.userField(e.Str("proto", "socks5-udp").Str("client", a.ctl.RemoteAddr().String()))
	if a.up != nil {
		e = e.Str("src", a.eg.Src.Label) // an upstream entry, without its credentials
	} else {
		e = e.Stringer("src", a.eg.Local)
	}
	e = e.Int("destinations", len(a.dests)).Bool("destinations_capped", a.destOverflow).
		Int64("datagrams_up", a.sent.Load()).Int64("datagrams_down", a.recv.Load()).
		Int64("up", a.sentBytes.Load()).Int64("down", a.recvBytes.Load()).Int64("dropped", a.dropped.Load()).
		Dur("dur_ms", d)
	reason := "control-closed"
	switch {
	case errors.Is(a.why, errUDPIdle):
		reason = "udp-idle-timeout"
	case errors.Is(a.why, errUpstreamClosed):
		reason = "upstream-closed"
	case errors.Is(a.why, net.ErrClosed), errors.Is(a.why, errControlClosed):
	default:
		e = e.Err(a.why)
	}
	e.Str("reason", reason).Msg("socks5 udp association")
}

package socks

import (
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
type association struct {
	s     *Server
	ss    *session
	eg    pool.Egress
	m     *metrics.Source
	ctl   net.Conn
	relay *net.UDPConn // client side, on the address the client reached
	out   *net.UDPConn // bound to the egress
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
	names                map[string]netip.Addr // resolved in the source's family; inbound loop only
	refused              map[netip.AddrPort]struct{}
	dests                map[netip.AddrPort]struct{}
	destOverflow         bool
	// lastDst was allowed by the policy at lastChecked (unix nanos): a
	// stream to one destination is checked again every policyRecheck,
	// not per datagram. Inbound loop only.
	lastDst     netip.AddrPort
	lastChecked int64
	endOnce     sync.Once
	why         error
}

// associate serves a UDP ASSOCIATE request after the handshake, until the
// control connection closes or the association idles; it runs on the
// connection's worker goroutine and ends the session.
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
	wg.Add(2)
	if a.up != nil {
		wg.Add(1)
		s.Acc.Go(func() { defer wg.Done(); a.fromUpstream() })
		s.Acc.Go(func() { defer wg.Done(); a.watchUpstream() })
	} else {
		s.Acc.Go(func() { defer wg.Done(); a.fromDestinations() })
	}
	s.Acc.Go(func() { defer wg.Done(); a.watchControl() })
	a.fromClient()
	wg.Wait()
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

// openAssociation chooses the egress, opens both sockets and sends the
// reply naming the relay socket.
func (s *Server) openAssociation(c net.Conn, ss *session, req statute.Request) (*association, error) {
	eg, out, up, m, err := s.egressUDP(c, ss)
	if err != nil {
		return nil, err
	}
	// The relay listens on the address the client reached us on, so the
	// reply's BND.ADDR is one the client can send to.
	local := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr()
	relay, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		closeEgress(out, up)
		return nil, s.fail(c, ss, repGeneralFailure, fmt.Errorf("UDP relay socket: %w", err))
	}
	if err := writeReply(c, statute.RepSuccess, relay.LocalAddr()); err != nil {
		closeEgress(out, up)
		relay.Close()
		return nil, fmt.Errorf("success reply: %w", err)
	}
	ss.reply = statute.RepSuccess
	a := &association{s: s, ss: ss, eg: eg, m: m, ctl: c, relay: relay, out: out, up: up,
		clientIP: clientAddr(c).Unmap(), names: map[string]netip.Addr{}, refused: map[netip.AddrPort]struct{}{},
		dests: map[netip.AddrPort]struct{}{}}
	// A client that declared the port it will send from is held to it;
	// otherwise the first datagram's port is pinned.
	if req.DstAddr.Port != 0 {
		declared := netip.AddrPortFrom(a.clientIP, uint16(req.DstAddr.Port))
		a.client.Store(&declared)
	}
	a.touch()
	return a, nil
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

// closeEgress closes an association's egress socket, and its upstream's
// control connection when it has one.
func closeEgress(out *net.UDPConn, up *pool.UpstreamUDP) {
	if up != nil {
		up.Close()
		return
	}
	out.Close()
}

func (a *association) touch() { a.last.Store(time.Now().UnixNano()) }

// end closes the association once, recording why.
func (a *association) end(why error) {
	a.endOnce.Do(func() {
		a.why = why
		a.relay.Close()
		closeEgress(a.out, a.up)
		a.ctl.Close()
	})
}

// watchControl ends the association when the client closes (or resets)
// its control connection; anything it sends there is discarded.
func (a *association) watchControl() {
	_, err := io.Copy(io.Discard, a.ctl)
	if err == nil {
		err = errControlClosed
	}
	a.end(err)
}

// idleDeadline sets a socket's read deadline to when the association
// would idle out; on a timeout, expired reports whether it has.
func (a *association) idleDeadline(c *net.UDPConn) {
	_ = c.SetReadDeadline(time.Unix(0, a.last.Load()).Add(a.s.opts.UDPIdleTimeout))
}

func (a *association) expired() bool {
	return time.Since(time.Unix(0, a.last.Load())) >= a.s.opts.UDPIdleTimeout
}

// readLoop reads datagrams from c until the association ends, handing
// each to handle; the read deadline follows the idle timeout.
// The deadline is not moved on every datagram (that costs a timer update
// each): when it passes, the loop looks at the last activity either way
// and sets it again from there, or ends the association.
func (a *association) readLoop(c *net.UDPConn, buf []byte, handle func(b []byte, from netip.AddrPort)) {
	a.idleDeadline(c)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && !a.expired() {
				a.idleDeadline(c)
				continue
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				err = errUDPIdle
			}
			a.end(err)
			return
		}
		handle(buf[:n], from)
	}
}

// fromClient relays the client's datagrams to their destinations.
func (a *association) fromClient() {
	buf := make([]byte, maxDatagram+1)
	a.readLoop(a.relay, buf, a.toDestination)
}

func (a *association) toDestination(b []byte, from netip.AddrPort) {
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
		if ip = a.resolve(h.name); !ip.IsValid() {
			return
		}
	}
	dst := netip.AddrPortFrom(ip, h.port)
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
	if _, err := a.out.WriteToUDPAddrPort(payload, dst); err != nil {
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
	if _, err := a.out.WriteToUDPAddrPort(b, a.up.Relay); err != nil {
		a.drop(metrics.DropSend)
		return
	}
	a.sent.Add(1)
	a.sentBytes.Add(int64(payloadLen))
	a.m.UDPSent(payloadLen)
}

// fromUpstream relays the upstream association's replies to the client as
// they come, each with the header naming its source; datagrams from any
// other address, or that do not parse, are dropped.
func (a *association) fromUpstream() {
	buf := make([]byte, maxDatagram+1)
	a.readLoop(a.out, buf, func(b []byte, from netip.AddrPort) {
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
		if _, err := a.relay.WriteToUDPAddrPort(b, *client); err != nil {
			a.drop(metrics.DropSend)
			return
		}
		a.recv.Add(1)
		a.recvBytes.Add(int64(len(payload)))
		a.m.UDPReceived(len(payload))
	})
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

// resolve returns the address of name for this association, resolving it
// once (in the source's family); invalid, and the datagram dropped, when
// it does not resolve.
func (a *association) resolve(name []byte) netip.Addr {
	if ip, ok := a.names[string(name)]; ok {
		return ip
	}
	ctx, cancel := context.WithTimeout(a.s.Ctx, 5*time.Second)
	ip, err := a.s.opts.Dialer.ResolveUDP(ctx, a.eg, string(name))
	cancel()
	if err != nil {
		a.drop(metrics.DropUnresolved)
		return netip.Addr{}
	}
	if len(a.names) < maxNames {
		a.names[string(name)] = ip
	}
	return ip
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

// fromDestinations relays replies to the client, each with the header
// naming the destination it came from.
func (a *association) fromDestinations() {
	buf := make([]byte, 22+maxDatagram) // room for the longest header
	const head = 22
	a.readLoop(a.out, buf[head:], func(payload []byte, from netip.AddrPort) {
		client := a.client.Load()
		if client == nil {
			return // nothing was sent yet: no one to answer
		}
		a.touch()
		hdr := appendUDPHeader(buf[:0], from)
		// The header goes right before the payload, in the same buffer.
		start := head - len(hdr)
		copy(buf[start:], hdr)
		msg := buf[start : head+len(payload)]
		if _, err := a.relay.WriteToUDPAddrPort(msg, *client); err != nil {
			a.drop(metrics.DropSend)
			return
		}
		a.recv.Add(1)
		a.recvBytes.Add(int64(len(payload)))
		a.m.UDPReceived(len(payload))
	})
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

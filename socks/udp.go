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
	s.Acc.Go(func() { defer wg.Done(); a.fromDestinations() })
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
	eg, err := s.opts.Dialer.ChooseUDP(s.Ctx, ss.sticky)
	ss.src = eg.Src
	m := s.opts.Metrics.Source(eg.Src)
	m.Request(metrics.SOCKS5, err)
	if err != nil {
		if pool.Classify(err) == pool.ClassRateLimited {
			ss.limit = serve.PerIPRate
		}
		return nil, s.fail(c, ss, replyFor(pool.Classify(err)), err)
	}
	out, err := s.opts.Dialer.OpenUDP(s.Ctx, eg)
	if err != nil {
		return nil, s.fail(c, ss, repGeneralFailure, err)
	}
	// The relay listens on the address the client reached us on, so the
	// reply's BND.ADDR is one the client can send to.
	local := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr()
	relay, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		out.Close()
		return nil, s.fail(c, ss, repGeneralFailure, fmt.Errorf("UDP relay socket: %w", err))
	}
	if err := writeReply(c, statute.RepSuccess, relay.LocalAddr()); err != nil {
		out.Close()
		relay.Close()
		return nil, fmt.Errorf("success reply: %w", err)
	}
	ss.reply = statute.RepSuccess
	a := &association{s: s, ss: ss, eg: eg, m: m, ctl: c, relay: relay, out: out,
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

func (a *association) touch() { a.last.Store(time.Now().UnixNano()) }

// end closes the association once, recording why.
func (a *association) end(why error) {
	a.endOnce.Do(func() {
		a.why = why
		a.relay.Close()
		a.out.Close()
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
	e = e.Stringer("src", a.eg.Local).Int("destinations", len(a.dests)).Bool("destinations_capped", a.destOverflow).
		Int64("datagrams_up", a.sent.Load()).Int64("datagrams_down", a.recv.Load()).
		Int64("up", a.sentBytes.Load()).Int64("down", a.recvBytes.Load()).Int64("dropped", a.dropped.Load()).
		Dur("dur_ms", d)
	reason := "control-closed"
	switch {
	case errors.Is(a.why, errUDPIdle):
		reason = "udp-idle-timeout"
	case errors.Is(a.why, net.ErrClosed), errors.Is(a.why, errControlClosed):
	default:
		e = e.Err(a.why)
	}
	e.Str("reason", reason).Msg("socks5 udp association")
}

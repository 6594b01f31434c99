package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/rotor-proxy/rotor/dest"
)

// UDP over an egress (SOCKS5 UDP ASSOCIATE): one socket bound to the
// egress's local address carries every datagram of an association, to any
// destination, so a QUIC connection or a game session keeps one address.
// The destination policy applies per datagram (CheckUDP), after a name is
// resolved in the source's family (ResolveUDP).

// ChooseUDP is Choose for a UDP association: upstream entries that do not
// relay UDP (HTTP proxies, and SOCKS5 ones that refused UDP ASSOCIATE
// once) have their turns passed over; a session pinned to one gets
// ErrNoSource.
func (d *Dialer) ChooseUDP(ctx context.Context, s Session) (Egress, error) {
	for range len(d.PoolFor(s).Sources()) {
		e, err := d.Choose(ctx, Any, s)
		if err != nil || e.Src.Up == nil || e.Src.Up.relaysUDP() {
			return e, err
		}
	}
	return Egress{}, fmt.Errorf("%w: UDP needs a local address or a SOCKS5 upstream that relays it, and the pool's entries for it are neither", ErrNoSource)
}

// relaysUDP reports whether an association may try the upstream.
func (u *Upstream) relaysUDP() bool { return u.Kind == SOCKS5Upstream && !u.noUDP.Load() }

// UpstreamUDP is a UDP association rotor holds on a SOCKS5 upstream
// entry: datagrams, each with its SOCKS5 UDP header (RFC 1928 section 7)
// as the client wrote it, go from Conn to Relay, and the upstream's
// replies come back to Conn with theirs. The association lasts as long
// as Ctl, its control connection.
type UpstreamUDP struct {
	Ctl   *net.TCPConn
	Relay netip.AddrPort
	Conn  *net.UDPConn
}

// OpenUDPUpstream opens a UDP association on e's upstream, a SOCKS5 proxy.
// An upstream that answers "command not supported" is remembered as one
// that does not relay UDP (ErrUpstreamNoUDP: choose again); its other
// failures count toward its health as a CONNECT's do.
func (d *Dialer) OpenUDPUpstream(ctx context.Context, e Egress) (*UpstreamUDP, error) {
	up := e.Src.Up
	if !up.relaysUDP() {
		return nil, ErrUpstreamNoUDP
	}
	if d.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.timeout)
		defer cancel()
	}
	ctl, err := d.upstreamConn(ctx, up)
	var relay netip.AddrPort
	if err == nil {
		relay, err = associate(ctx, ctl, up, e.Session)
		if err != nil {
			ctl.Close()
		}
	}
	if errors.Is(err, ErrUpstreamNoUDP) {
		up.noUDP.Store(true)
		return nil, fmt.Errorf("via %s: %w", up.label, err)
	}
	d.NoteUpstream(e.Src, err)
	if err != nil {
		return nil, fmt.Errorf("via %s: %w", up.label, err)
	}
	// A relay on the unspecified address means the upstream's own.
	if !relay.Addr().IsValid() || relay.Addr().IsUnspecified() {
		relay = netip.AddrPortFrom(ctl.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(), relay.Port())
	}
	laddr := &net.UDPAddr{}
	if up.Via.IsValid() {
		laddr.IP = up.Via.AsSlice()
	}
	network := "udp4"
	if relay.Addr().Is6() {
		network = "udp6"
	}
	conn, err := net.ListenUDP(network, laddr)
	if err != nil {
		ctl.Close()
		return nil, fmt.Errorf("UDP socket for %s: %w", up.label, err)
	}
	return &UpstreamUDP{Ctl: ctl, Relay: relay, Conn: conn}, nil
}

// associate asks the upstream on c for a UDP association, within ctx, and
// returns its relay address.
func associate(ctx context.Context, c *net.TCPConn, up *Upstream, sess Session) (relay netip.AddrPort, err error) {
	err = withDeadline(ctx, c, func() error {
		if err := socksAuth(c, up.user(sess), up.Pass); err != nil {
			return err
		}
		// 0.0.0.0:0: rotor's datagrams may come from any port of this host.
		relay, err = socksRequest(c, 3, "0.0.0.0", 0)
		return err
	})
	return relay, err
}

// OpenUDP binds a UDP socket to e's local address (any port). For a block
// the address need not be configured on an interface (IP_FREEBIND). If
// the source's address has left the host, the source leaves rotation.
func (d *Dialer) OpenUDP(ctx context.Context, e Egress) (*net.UDPConn, error) {
	network := "udp4"
	if e.Local.Is6() {
		network = "udp6"
	}
	var lc net.ListenConfig
	if e.Src.Block {
		lc.Control = freeBind
	}
	pc, err := lc.ListenPacket(ctx, network, netip.AddrPortFrom(e.Local, 0).String())
	if err != nil {
		err = fmt.Errorf("UDP socket on %s: %w", e.Local, err)
		d.noteGone(e, err)
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// freeBind sets IP_FREEBIND: a block's address is routed to the host but
// not configured on an interface.
func freeBind(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
	}); err != nil {
		return err
	}
	return serr
}

// ResolveUDP resolves host for a datagram over e: in the family of e's
// source, within the DNS timeout; the first answer. An address literal is
// returned as it is.
func (d *Dialer) ResolveUDP(ctx context.Context, e Egress, host string) (netip.Addr, error) {
	if ip, ok := dest.ParseHost(host); ok {
		return ip, nil
	}
	network := "ip4"
	if e.Src.Addr.Is6() {
		network = "ip6"
	}
	ips, err := d.lookup(ctx, host, network)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(ips) == 0 {
		return netip.Addr{}, fmt.Errorf("resolve %s: %w", host, ErrNoAddress)
	}
	return ips[0].Unmap(), nil
}

// CheckUDP reports whether a datagram over e may go to dst: the
// destination policy, and dst of the source's family (an upstream entry
// reaches either).
func (d *Dialer) CheckUDP(e Egress, dst netip.AddrPort) error {
	if err := d.policy.Check(dst); err != nil {
		return err
	}
	if e.Src.Up == nil && dst.Addr().Unmap().Is4() != e.Src.Addr.Is4() {
		return fmt.Errorf("send to %s from %s: %w", dst, e.Src.Label, ErrNoSource)
	}
	return nil
}

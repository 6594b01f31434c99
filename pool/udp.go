package pool

import (
	"context"
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

// ChooseUDP is Choose for a UDP association: upstream entries carry TCP
// only, so their turns are passed over (a session pinned to one gets
// ErrNoSource).
func (d *Dialer) ChooseUDP(ctx context.Context, s Session) (Egress, error) {
	for range len(d.PoolFor(s).Sources()) {
		e, err := d.Choose(ctx, Any, s)
		if err != nil || e.Src.Up == nil {
			return e, err
		}
	}
	return Egress{}, fmt.Errorf("%w: UDP needs a local address, and the pool's entries for it are upstream proxies", ErrNoSource)
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
// destination policy, and dst of the source's family.
func (d *Dialer) CheckUDP(e Egress, dst netip.AddrPort) error {
	if err := d.policy.Check(dst); err != nil {
		return err
	}
	if dst.Addr().Unmap().Is4() != e.Src.Addr.Is4() {
		return fmt.Errorf("send to %s from %s: %w", dst, e.Src.Label, ErrNoSource)
	}
	return nil
}

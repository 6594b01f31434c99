package pool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A block entry (2001:db8:1::/64, 203.0.113.0/24) gives every connection
// a fresh random address inside it, or a session its own stable one. The
// socket binds the address with IP_FREEBIND, so the addresses need not be
// configured on an interface; the block must be routed to the host as
// local (ip route add local BLOCK dev lo), or replies would not come back.

// Local is the address a connection from s binds: the address itself, or
// for a block a random address in it. It does not allocate.
func (s *Source) Local() netip.Addr {
	if !s.Block {
		return s.Addr
	}
	return s.hostAddr(rand.Uint64(), rand.Uint64())
}

// SessionLocal is the address a session binds: the address itself, or
// for a block an address derived from the session's key and period, the
// same in every process.
func (s *Source) SessionLocal(sess Session, now time.Time) netip.Addr {
	if !s.Block {
		return s.Addr
	}
	h := sessionHash(sess, now)
	return s.hostAddr(mix(h^0x5bd1e9955bd1e995), mix(h^0x27d4eb2f165667c5))
}

// hostAddr fills the block's host bits from r1 (high half) and r2 (low
// half). The all-zeros and all-ones host parts are skipped when the block
// has more than two addresses: they are the IPv4 network and broadcast
// addresses, and IPv6's subnet-router anycast and the top of the reserved
// anycast range.
func (s *Source) hostAddr(r1, r2 uint64) netip.Addr {
	for {
		hi, lo := r1&s.hostHi, r2&s.hostLo
		edge := (hi == 0 && lo == 0) || (hi == s.hostHi && lo == s.hostLo)
		if !edge || (s.hostHi == 0 && s.hostLo <= 1) {
			if s.Addr.Is4() {
				var b [4]byte
				binary.BigEndian.PutUint32(b[:], uint32(s.baseLo|lo))
				return netip.AddrFrom4(b)
			}
			var b [16]byte
			binary.BigEndian.PutUint64(b[:8], s.baseHi|hi)
			binary.BigEndian.PutUint64(b[8:], s.baseLo|lo)
			return netip.AddrFrom16(b)
		}
		r1, r2 = mix(r1+1), mix(r2+1)
	}
}

// bindFree is bindNoPort plus IP_FREEBIND, for block sources: bind an
// address that no interface has. IP_FREEBIND at the IP level also applies
// to IPv6 sockets (the kernel keeps one flag for both; IPV6_FREEBIND, from
// 4.15, is an alias), and no global sysctl (ip_nonlocal_bind) changes.
func bindFree(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// ErrNotRouted is returned at start-up for a block that is not routed to
// this host as local.
var ErrNotRouted = errors.New("block is not routed to this host as local")

// checkBlock checks that the kernel delivers traffic for every address of
// the block locally: a route of type local covers it (ip route add local
// BLOCK dev lo). Binding with IP_FREEBIND would succeed without one, and
// every connection would then time out waiting for replies the host
// drops or forwards.
func checkBlock(s *Source) error {
	ok, err := localRouted(s.Prefix)
	if err != nil {
		return fmt.Errorf("pool entry %s: reading the routing table: %w", s.Prefix, err)
	}
	if !ok {
		v := "-4"
		if s.Addr.Is6() {
			v = "-6"
		}
		return fmt.Errorf("pool entry %s: %w: run `ip %s route add local %s dev lo` (and have your provider route it to this host)",
			s.Prefix, ErrNotRouted, v, s.Prefix)
	}
	// And that a socket can bind an address in it.
	ln, err := (&net.ListenConfig{Control: bindFree}).Listen(context.Background(), "tcp", net.JoinHostPort(s.Local().String(), "0"))
	if err != nil {
		return fmt.Errorf("pool entry %s: cannot bind an address in the block: %w", s.Prefix, err)
	}
	return ln.Close()
}

// localRouted reports whether a local-type route in any table covers all
// of p. It reads the routing tables over netlink (the dump `ip route show
// table all` reads).
func localRouted(p netip.Prefix) (bool, error) {
	family := syscall.AF_INET
	if p.Addr().Is6() {
		family = syscall.AF_INET6
	}
	rib, err := syscall.NetlinkRIB(syscall.RTM_GETROUTE, family)
	if err != nil {
		return false, err
	}
	msgs, err := syscall.ParseNetlinkMessage(rib)
	if err != nil {
		return false, err
	}
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type != syscall.RTM_NEWROUTE || len(m.Data) < syscall.SizeofRtMsg {
			continue
		}
		rtm := (*syscall.RtMsg)(unsafe.Pointer(&m.Data[0]))
		if rtm.Type != syscall.RTN_LOCAL || int(rtm.Dst_len) > p.Bits() {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(m)
		if err != nil {
			continue
		}
		for _, a := range attrs {
			if a.Attr.Type != syscall.RTA_DST {
				continue
			}
			dst, ok := netip.AddrFromSlice(a.Value)
			if !ok {
				continue
			}
			if netip.PrefixFrom(dst.Unmap(), int(rtm.Dst_len)).Contains(p.Addr()) {
				return true, nil
			}
		}
	}
	return false, nil
}

// Package dest decides which destinations rotor may connect to: the
// policy that keeps a proxy reachable from outside from becoming a way
// into the host's own services, its private networks or a cloud metadata
// endpoint, and the parser that reads every spelling of an IP address a
// client may send (inet_aton's included) as the address it denotes.
//
// The dialer (package pool) checks every address it is about to dial,
// after name resolution; the listeners never see a forbidden address.
package dest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
)

// ErrForbidden is returned for a destination the policy refuses.
var ErrForbidden = errors.New("destination forbidden by policy")

// Policy decides which destination addresses rotor may connect to. A proxy
// reachable from outside must not become a way into the host's own
// services, its private networks or a cloud metadata endpoint. The check
// runs on the address actually dialled, after name resolution, so a name
// that resolves (or re-resolves) to a forbidden address is refused too.
//
// The zero Policy refuses only the unspecified addresses; NewPolicy
// builds the default one. A nil *Policy allows everything.
type Policy struct {
	Deny  []netip.Prefix   // refused ranges (NewPolicy: DefaultDeny)
	Allow []netip.Prefix   // exceptions to Deny and the host's addresses (--allow-dest)
	Self  []netip.AddrPort // rotor's own listeners, refused whatever Allow says
	// host holds every address configured on the host's interfaces: a
	// service bound to the wildcard address answers on each of them, so
	// dialling one is dialling the host. Replaced whole from the kernel's
	// address list (LoadHostAddrs), read with one atomic load.
	host atomic.Pointer[map[netip.Addr]struct{}]
}

// DefaultDeny is what rotor refuses unless --allow-dest opens it.
func DefaultDeny() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",      // "this network"
		"10.0.0.0/8",     // private
		"100.64.0.0/10",  // carrier-grade NAT
		"127.0.0.0/8",    // loopback
		"169.254.0.0/16", // link-local, cloud metadata (169.254.169.254)
		"172.16.0.0/12",  // private
		"192.168.0.0/16", // private
		"224.0.0.0/4",    // multicast
		"240.0.0.0/4",    // reserved, and the broadcast address
		"::/96",          // unspecified, loopback, IPv4-compatible (deprecated since RFC 4291)
		"fe80::/10",      // link-local
		"fc00::/7",       // unique local
		"ff00::/8",       // multicast
		"64:ff9b:1::/48", // local-use NAT64 (RFC 8215)
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// NewPolicy returns the default policy with allow as exceptions, refusing
// also rotor's own listen addresses (self). The host's own addresses are
// refused once LoadHostAddrs or SetHostAddrs has told it what they are.
func NewPolicy(allow []netip.Prefix, self []netip.AddrPort) *Policy {
	return &Policy{Deny: DefaultDeny(), Allow: allow, Self: self}
}

// Check returns nil if dst may be dialled, or an error wrapping
// ErrForbidden that says why. IPv4-mapped IPv6 addresses are checked as
// the IPv4 address they carry; an IPv6 address that embeds an IPv4 one
// (NAT64, 6to4, Teredo, IPv4-translated or -compatible) is refused if
// either address is.
func (p *Policy) Check(dst netip.AddrPort) error {
	if p == nil {
		return nil
	}
	ip := dst.Addr().Unmap().WithZone("")
	if why := p.refuses(ip, dst.Port()); why != "" {
		return fmt.Errorf("%w: %s", ErrForbidden, why)
	}
	if !ip.Is6() {
		return nil
	}
	v4, n := embeddedIPv4(ip)
	for _, a := range v4[:n] {
		if why := p.refuses(a, dst.Port()); why != "" {
			return fmt.Errorf("%w: %s carries the IPv4 address %s; %s", ErrForbidden, ip, a, why)
		}
	}
	return nil
}

// refuses says why the policy refuses one address, or "" if it does not.
func (p *Policy) refuses(ip netip.Addr, port uint16) string {
	if ip.IsUnspecified() {
		// Linux connects a socket to 0.0.0.0 or :: as to the host itself,
		// so no --allow-dest opens them.
		return ip.String() + " is the unspecified address, which reaches this host"
	}
	for _, s := range p.Self {
		if port == s.Port() && (ip == s.Addr().Unmap() || s.Addr().IsUnspecified()) {
			return netip.AddrPortFrom(ip, port).String() + " is rotor's own listener"
		}
	}
	for _, a := range p.Allow {
		if a.Contains(ip) {
			return ""
		}
	}
	if h := p.host.Load(); h != nil {
		if _, ok := (*h)[ip]; ok {
			return ip.String() + " is an address of this host (open it with --allow-dest)"
		}
	}
	for _, d := range p.Deny {
		if d.Contains(ip) {
			return fmt.Sprintf("%s is in %s (open it with --allow-dest)", ip, d)
		}
	}
	return ""
}

// Prefixes whose addresses carry an IPv4 address.
var (
	nat64WellKnown = netip.MustParsePrefix("64:ff9b::/96")    // RFC 6052
	nat64LocalUse  = netip.MustParsePrefix("64:ff9b:1::/48")  // RFC 8215
	sixToFour      = netip.MustParsePrefix("2002::/16")       // RFC 3056
	teredo         = netip.MustParsePrefix("2001::/32")       // RFC 4380
	v4Translated   = netip.MustParsePrefix("::ffff:0:0:0/96") // RFC 2765
	v4Compatible   = netip.MustParsePrefix("::/96")           // RFC 4291, deprecated
)

// rfc6052 lists, for each NAT64 prefix length a local-use network may
// use, the bytes of the address holding the IPv4 address (byte 8 is
// always skipped).
var rfc6052 = [...][4]int{
	{6, 7, 9, 10},   // /48
	{7, 9, 10, 11},  // /56
	{9, 10, 11, 12}, // /64
	{12, 13, 14, 15},
}

// embeddedIPv4 returns the IPv4 addresses an IPv6 address carries, by
// the transition mechanism its prefix names: a NAT64 gateway, a 6to4
// relay or a Teredo peer would deliver a packet to them. A local-use
// NAT64 address's prefix length is the operator's choice, so every
// placement RFC 6052 allows is returned.
func embeddedIPv4(ip netip.Addr) (out [4]netip.Addr, n int) {
	b := ip.As16()
	at := func(i, j, k, l int) netip.Addr { return netip.AddrFrom4([4]byte{b[i], b[j], b[k], b[l]}) }
	switch {
	case ip.IsLoopback() || ip.IsUnspecified():
		// ::1 and :: are in ::/96 but carry no IPv4 address.
	case nat64WellKnown.Contains(ip), v4Translated.Contains(ip), v4Compatible.Contains(ip):
		out[0], n = at(12, 13, 14, 15), 1
	case nat64LocalUse.Contains(ip):
		for i, pos := range rfc6052 {
			out[i] = at(pos[0], pos[1], pos[2], pos[3])
		}
		n = len(rfc6052)
	case sixToFour.Contains(ip):
		out[0], n = at(2, 3, 4, 5), 1
	case teredo.Contains(ip):
		// The server's address in the clear, the client's (its NAT's
		// public address) with every bit inverted.
		out[0] = at(4, 5, 6, 7)
		out[1] = netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]})
		n = 2
	}
	return out, n
}

// SetHostAddrs replaces the set of the host's own addresses, which are
// refused unless --allow-dest opens them.
func (p *Policy) SetHostAddrs(addrs []netip.Addr) {
	if p == nil {
		return
	}
	m := make(map[netip.Addr]struct{}, len(addrs))
	for _, a := range addrs {
		m[a.Unmap().WithZone("")] = struct{}{}
	}
	p.host.Store(&m)
}

// LoadHostAddrs reads every address configured on the host's interfaces
// (IPv4 and IPv6, over netlink) into the policy. The dialer's address
// watcher calls it again on each kernel address event.
func (p *Policy) LoadHostAddrs() error {
	if p == nil {
		return nil
	}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return fmt.Errorf("reading the host's addresses: %w", err)
	}
	addrs := make([]netip.Addr, 0, len(ifaddrs))
	for _, a := range ifaddrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				addrs = append(addrs, ip)
			}
		}
	}
	p.SetHostAddrs(addrs)
	return nil
}

package pool

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ErrForbidden is returned for a destination the policy refuses.
var ErrForbidden = errors.New("destination forbidden by policy")

// Policy decides which destination addresses rotor may connect to. A proxy
// reachable from outside must not become a way into the host's own
// services, its private networks or a cloud metadata endpoint. The check
// runs on the address actually dialled, after name resolution, so a name
// that resolves (or re-resolves) to a forbidden address is refused too.
//
// The zero Policy allows everything; NewPolicy builds the default one.
type Policy struct {
	deny  []netip.Prefix
	allow []netip.Prefix   // exceptions to deny (--allow-dest)
	self  []netip.AddrPort // rotor's own listeners
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
		"::/128",         // unspecified
		"::1/128",        // loopback
		"fe80::/10",      // link-local
		"fc00::/7",       // unique local
		"ff00::/8",       // multicast
		"64:ff9b:1::/48", // local-use NAT64
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// NewPolicy returns the default policy with allow as exceptions, refusing
// also rotor's own listen addresses (self).
func NewPolicy(allow []netip.Prefix, self []netip.AddrPort) *Policy {
	return &Policy{deny: DefaultDeny(), allow: allow, self: self}
}

// Check returns nil if dst may be dialled, or an error wrapping
// ErrForbidden that says why. IPv4-mapped IPv6 addresses are checked as
// the IPv4 address they carry.
func (p *Policy) Check(dst netip.AddrPort) error {
	if p == nil {
		return nil
	}
	ip := dst.Addr().Unmap().WithZone("")
	for _, s := range p.self {
		if dst.Port() == s.Port() && (ip == s.Addr().Unmap() || s.Addr().IsUnspecified()) {
			return fmt.Errorf("%w: %s is rotor's own listener", ErrForbidden, dst)
		}
	}
	for _, a := range p.allow {
		if a.Contains(ip) {
			return nil
		}
	}
	for _, d := range p.deny {
		if d.Contains(ip) {
			return fmt.Errorf("%w: %s is in %s (open it with --allow-dest)", ErrForbidden, ip, d)
		}
	}
	return nil
}

// ParseHost returns the address a host names when it is an IP literal,
// including the spellings inet_aton(3) accepts and that some resolvers and
// clients honour: "127.1", "2130706433", "0x7f000001", "0177.0.0.1". Such
// a host is treated as the address it denotes, never sent to DNS.
func ParseHost(host string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")); err == nil {
		return a.Unmap().WithZone(""), true
	}
	return parseLegacyIPv4(host)
}

// parseLegacyIPv4 parses inet_aton's forms: 1 to 4 dot-separated parts,
// each decimal, octal (leading 0) or hex (0x); the last part fills the
// remaining bytes.
func parseLegacyIPv4(s string) (netip.Addr, bool) {
	if s == "" || strings.HasSuffix(s, ".") {
		return netip.Addr{}, false
	}
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	var vals []uint64
	for _, p := range parts {
		base := 10
		switch {
		case len(p) > 2 && (p[:2] == "0x" || p[:2] == "0X"):
			base, p = 16, p[2:]
		case len(p) > 1 && p[0] == '0':
			base, p = 8, p[1:]
		}
		v, err := strconv.ParseUint(p, base, 32)
		if err != nil {
			return netip.Addr{}, false
		}
		vals = append(vals, v)
	}
	var ip uint64
	for i, v := range vals[:len(vals)-1] {
		if v > 255 {
			return netip.Addr{}, false
		}
		ip |= v << (24 - 8*uint(i))
	}
	last := vals[len(vals)-1]
	if rest := uint(8 * (4 - len(vals) + 1)); last >= 1<<rest {
		return netip.Addr{}, false
	}
	ip |= last
	return netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)}), true
}

// DenyAll refuses every destination: for fuzzing the protocol code with
// whatever addresses the fuzzer invents, without a packet leaving.
func DenyAll() *Policy {
	return &Policy{deny: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}
}

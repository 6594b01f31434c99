package dest

import (
	"net/netip"
	"strconv"
	"strings"
)

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

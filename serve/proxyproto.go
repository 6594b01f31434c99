package serve

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/rotor-proxy/rotor/internal/sockread"
)

// ErrProxyHeader is every PROXY protocol header that is missing or does
// not parse.
var ErrProxyHeader = errors.New("PROXY protocol header")

// proxyV2Sig starts a PROXY protocol v2 header.
var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// maxProxyV1 is the longest v1 line the specification allows.
const maxProxyV1 = 107

// ReadProxyHeader reads the PROXY protocol header (v1 or v2, as HAProxy's
// send-proxy and send-proxy-v2 write it) at the start of c, without
// reading past it, and returns the client address it carries. A LOCAL
// (v2) or UNKNOWN (v1) header carries none: the result is then invalid,
// and the peer's own address stands.
func ReadProxyHeader(c *net.TCPConn) (netip.AddrPort, error) {
	// 12 bytes: the v2 signature, and shorter than any v1 line (15).
	var b [16]byte
	if _, err := io.ReadFull(c, b[:12]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %w", ErrProxyHeader, err)
	}
	if bytes.Equal(b[:12], proxyV2Sig) {
		if _, err := io.ReadFull(c, b[12:16]); err != nil {
			return netip.AddrPort{}, fmt.Errorf("%w: %w", ErrProxyHeader, err)
		}
		n := int(binary.BigEndian.Uint16(b[14:16]))
		rest := make([]byte, n)
		if _, err := io.ReadFull(c, rest); err != nil {
			return netip.AddrPort{}, fmt.Errorf("%w: %w", ErrProxyHeader, err)
		}
		return parseProxyV2(b[12], b[13], rest)
	}
	if !bytes.HasPrefix(b[:12], []byte("PROXY ")) {
		return netip.AddrPort{}, fmt.Errorf("%w missing: the connection starts %q", ErrProxyHeader, b[:6])
	}
	line, err := sockread.Through(c, "\r\n", maxProxyV1-12)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %w", ErrProxyHeader, err)
	}
	return ParseProxyV1(append(b[:12:12], line...))
}

// ParseProxyV1 parses a whole v1 line, "PROXY TCP4 src dst sport dport\r\n".
func ParseProxyV1(line []byte) (netip.AddrPort, error) {
	bad := func(why string) (netip.AddrPort, error) {
		return netip.AddrPort{}, fmt.Errorf("%w v1: %s", ErrProxyHeader, why)
	}
	if len(line) > maxProxyV1 || !bytes.HasSuffix(line, []byte("\r\n")) || !bytes.HasPrefix(line, []byte("PROXY ")) {
		return bad("not a PROXY line")
	}
	f := bytes.Split(line[6:len(line)-2], []byte(" "))
	if len(f) >= 1 && string(f[0]) == "UNKNOWN" {
		return netip.AddrPort{}, nil
	}
	if len(f) != 5 || (string(f[0]) != "TCP4" && string(f[0]) != "TCP6") {
		return bad("want TCP4 or TCP6 and four fields")
	}
	src, err := netip.ParseAddr(string(f[1]))
	if err != nil || src.Is4() != (string(f[0]) == "TCP4") || src.Zone() != "" {
		return bad("source address")
	}
	if _, err := netip.ParseAddr(string(f[2])); err != nil {
		return bad("destination address")
	}
	port, err := strconv.ParseUint(string(f[3]), 10, 16)
	if err != nil || (len(f[3]) > 1 && f[3][0] == '0') {
		return bad("source port")
	}
	if _, err := strconv.ParseUint(string(f[4]), 10, 16); err != nil {
		return bad("destination port")
	}
	return netip.AddrPortFrom(src, uint16(port)), nil
}

// parseProxyV2 parses the rest of a v2 header: version and command, family
// and protocol, and the address block (TLVs after it are ignored).
func parseProxyV2(verCmd, fam byte, rest []byte) (netip.AddrPort, error) {
	if verCmd>>4 != 2 {
		return netip.AddrPort{}, fmt.Errorf("%w v2: version %d", ErrProxyHeader, verCmd>>4)
	}
	switch verCmd & 0xf {
	case 0: // LOCAL: the balancer's own connection (a health check)
		return netip.AddrPort{}, nil
	case 1: // PROXY
	default:
		return netip.AddrPort{}, fmt.Errorf("%w v2: command %d", ErrProxyHeader, verCmd&0xf)
	}
	switch fam {
	case 0x11, 0x12: // TCP or UDP over IPv4
		if len(rest) < 12 {
			return netip.AddrPort{}, fmt.Errorf("%w v2: short IPv4 address block", ErrProxyHeader)
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(rest[0:4])), binary.BigEndian.Uint16(rest[8:10])), nil
	case 0x21, 0x22: // over IPv6
		if len(rest) < 36 {
			return netip.AddrPort{}, fmt.Errorf("%w v2: short IPv6 address block", ErrProxyHeader)
		}
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(rest[0:16])).Unmap(), binary.BigEndian.Uint16(rest[32:34])), nil
	case 0x00: // UNSPEC
		return netip.AddrPort{}, nil
	}
	return netip.AddrPort{}, fmt.Errorf("%w v2: family and protocol 0x%02x", ErrProxyHeader, fam)
}

// ProxyProto makes connections from trusted peers carry their client's
// address: they must start with a PROXY protocol header, which is read
// (within Timeout) before the connection is served, and whose address is
// then the connection's RemoteAddr everywhere (--allow-clients, back-off,
// logs, metrics). Connections from other peers are served as they are: a
// header from them is not read, so it fails the protocol's own parser
// (HTTP 400, SOCKS5 close) and no client can claim another's address.
type ProxyProto struct {
	From    []netip.Prefix
	Timeout time.Duration
}

// Wrap reads c's header if c comes from a trusted peer and returns the
// connection to serve: c itself, or c with the header's client address.
func (p *ProxyProto) Wrap(c net.Conn) (net.Conn, error) {
	if p == nil || len(p.From) == 0 {
		return c, nil
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	peer := tc.RemoteAddr().(*net.TCPAddr).AddrPort()
	trusted := false
	for _, f := range p.From {
		if f.Contains(peer.Addr().Unmap()) {
			trusted = true
			break
		}
	}
	if !trusted {
		return c, nil
	}
	_ = tc.SetReadDeadline(time.Now().Add(p.Timeout))
	src, err := ReadProxyHeader(tc)
	_ = tc.SetReadDeadline(time.Time{})
	if err != nil {
		return nil, fmt.Errorf("from %s: %w", peer, err)
	}
	if !src.IsValid() {
		return c, nil
	}
	return &ProxiedConn{TCPConn: tc, remote: net.TCPAddrFromAddrPort(src)}, nil
}

// ProxiedConn is a client connection that came through a balancer: its
// RemoteAddr is the client's, from the PROXY header. It is still the
// balancer's socket underneath, which tunnels splice and park as any.
type ProxiedConn struct {
	*net.TCPConn
	remote *net.TCPAddr
}

// RemoteAddr is the client's address, as the PROXY header gave it.
func (c *ProxiedConn) RemoteAddr() net.Addr { return c.remote }

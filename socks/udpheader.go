package socks

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// The header of a UDP datagram between a client and the relay (RFC 1928
// section 7):
//
//	+-----+------+------+----------+----------+----------+
//	| RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
//	+-----+------+------+----------+----------+----------+
//	|  2  |  1   |  1   | Variable |    2     | Variable |
//
// rotor parses it itself rather than with statute.ParseDatagram, which
// allocates for every datagram (net.IP, the name as a string) and cannot
// take an empty payload.

var (
	errUDPShort = errors.New("datagram shorter than its header")
	errUDPAtyp  = errors.New("datagram address type unknown")
)

// udpHeader is a parsed client datagram header. name aliases the
// datagram's buffer.
type udpHeader struct {
	frag byte
	addr netip.Addr // ATYP 1 or 4
	name []byte     // ATYP 3
	port uint16
}

// parseUDPHeader splits a client datagram into its header and payload,
// without allocating.
func parseUDPHeader(b []byte) (h udpHeader, payload []byte, err error) {
	if len(b) < 4 {
		return h, nil, errUDPShort
	}
	h.frag = b[2]
	var n int // header length
	switch b[3] {
	case 1:
		n = 4 + 4 + 2
		if len(b) < n {
			return h, nil, errUDPShort
		}
		h.addr = netip.AddrFrom4([4]byte(b[4:8]))
	case 4:
		n = 4 + 16 + 2
		if len(b) < n {
			return h, nil, errUDPShort
		}
		h.addr = netip.AddrFrom16([16]byte(b[4:20])).Unmap()
	case 3:
		if len(b) < 5 {
			return h, nil, errUDPShort
		}
		l := int(b[4])
		n = 5 + l + 2
		if l == 0 || len(b) < n {
			return h, nil, errUDPShort
		}
		h.name = b[5 : 5+l]
	default:
		return h, nil, errUDPAtyp
	}
	h.port = binary.BigEndian.Uint16(b[n-2 : n])
	return h, b[n:], nil
}

// appendUDPHeader appends the header of a datagram from src to dst (to
// send a destination's reply to the client).
func appendUDPHeader(dst []byte, src netip.AddrPort) []byte {
	a := src.Addr().Unmap()
	if a.Is4() {
		ip := a.As4()
		dst = append(dst, 0, 0, 0, 1)
		dst = append(dst, ip[:]...)
	} else {
		ip := a.As16()
		dst = append(dst, 0, 0, 0, 4)
		dst = append(dst, ip[:]...)
	}
	return binary.BigEndian.AppendUint16(dst, src.Port())
}

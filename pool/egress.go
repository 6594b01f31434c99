package pool

import (
	"context"
	"net"
	"net/netip"
	"time"
)

// Egress is one chosen way out of the host for one connection: the pool
// entry and the local address it binds (for a block, the address drawn
// for this connection, or the session's own).
//
// Choosing and opening are separate steps, and every listener and
// transport goes through both:
//
//   - Choose applies everything that decides where a connection leaves
//     from: the strategy, the session (sticky sources and block
//     addresses), the user's pool, health (down sources are skipped),
//     and --per-ip-rate. It knows nothing of transports.
//   - Open* connects over the chosen egress: OpenTCP binds a TCP socket
//     to Local and connects, resolving a name in the source's family
//     and checking the destination policy (package dest) first. Metrics
//     (OnDial) and the removal of a source whose address left the host
//     happen here, whatever chose the egress.
//
// DialName, DialAddr and Dial compose the two with one retry over
// another egress when the first fails on rotor's side, and happy eyeballs
// across families. A new transport adds an Open method over Egress (a UDP
// socket bound to Local for SOCKS5 UDP ASSOCIATE); a new kind of entry
// (an upstream proxy) is a Source whose Open methods connect through it,
// while Choose, sessions, health and rate limits stay as they are:
//
//	e, err := d.Choose(ctx, pool.IPv4, sess)
//	if err != nil { ... }            // no source, rate-limited, cancelled
//	c, err := d.OpenTCP(ctx, e, "example.com", 443)
type Egress struct {
	Src   *Source
	Local netip.Addr // invalid for an upstream entry
	// Session is the client's session, which an upstream entry with
	// ?session=pass hands on in its user name.
	Session Session
}

// Choose picks the egress for one connection of family f (Any for a name)
// and session s: the session's source and address, or the next source of
// the session's pool (a user's) or the dialer's; under --per-ip-rate, one
// with a token, waiting up to RateWait. On error Src may still name the
// source that was picked, for logging.
func (d *Dialer) Choose(ctx context.Context, f Family, s Session) (Egress, error) {
	src, err := d.pick(ctx, f, s)
	if err != nil {
		return Egress{Src: src}, err
	}
	if src.Up != nil {
		return Egress{Src: src, Session: s}, nil
	}
	local := src.Local()
	if src.Block && s.Key != "" {
		local = src.SessionLocal(s, time.Now())
	}
	return Egress{Src: src, Local: local, Session: s}, nil
}

// OpenTCP connects over e to host:port. A name resolves only in the
// family of e's source. If the source's address has left the host, the
// source leaves rotation (see AddressGone).
func (d *Dialer) OpenTCP(ctx context.Context, e Egress, host string, port uint16) (net.Conn, error) {
	c, err := d.dialHost(ctx, e, host, port)
	d.noteGone(e, err)
	return c, err
}

// TCPConnOf is the TCP socket under c: c itself, or what a TLS (or other
// wrapping) connection runs over; nil when there is none.
func TCPConnOf(c net.Conn) *net.TCPConn {
	for c != nil {
		switch w := c.(type) {
		case *net.TCPConn:
			return w
		case interface{ NetConn() net.Conn }:
			c = w.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// noteGone takes e's source out of rotation when err says its address is
// gone from the host.
func (d *Dialer) noteGone(e Egress, err error) {
	if err != nil && AddressGone(err) {
		d.MarkDown(e.Src, err)
	}
}

// Probe connects over e to host:port for a health probe: like OpenTCP,
// but the destination policy does not apply (the operator chose the
// target, which may well be on a private network), OnDial is not told,
// and nothing leaves rotation here: the health checker decides.
func (d *Dialer) Probe(ctx context.Context, e Egress, host string, port uint16) (net.Conn, error) {
	return d.prober.dialHost(ctx, e, host, port)
}

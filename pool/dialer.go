package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rotor-proxy/rotor/dest"
)

// ErrNoAddress is returned when a host name has no address in the family
// of the source picked for it (an IPv4 source never dials an AAAA answer).
var ErrNoAddress = errors.New("host has no address in the source's family")

// ErrNoSuchHost is returned for a name that does not exist: no address of
// either family.
var ErrNoSuchHost = errors.New("no such host")

// ErrBadTarget is returned for a target that is not host:port with a port
// in 1-65535.
var ErrBadTarget = errors.New("bad target address")

// Dialer opens outbound TCP connections bound to a source of the pool. It
// is safe for concurrent use; both listeners share one.
type Dialer struct {
	pool       atomic.Pointer[Pool]
	rateWait   time.Duration
	timeout    time.Duration
	dnsTimeout time.Duration
	resolver   *net.Resolver
	policy     *dest.Policy
	prober     *Dialer // for health probes: no policy, no hooks (Probe)
	onChange   func(src *Source, up bool, err error)
	onDial     func(src *Source, took time.Duration, err error)
	prefer     Family
	// upstreamFall is how many upstream failures in a row take an
	// upstream entry out of rotation.
	upstreamFall int
	net          net.Dialer // single addresses
	free         net.Dialer // blocks: IP_FREEBIND as well
}

// DialerOptions configure a Dialer; the zero value is usable.
type DialerOptions struct {
	// Timeout bounds name resolution and connect together; zero means no
	// bound beyond the caller's context.
	Timeout time.Duration
	// Resolver resolves host names; nil means net.DefaultResolver.
	Resolver *net.Resolver
	// Policy refuses forbidden destinations; nil allows every address.
	Policy *dest.Policy
	// DNSTimeout bounds resolving a name; zero means Timeout alone.
	DNSTimeout time.Duration
	// OnChange, when set, is told each time a source goes out of rotation
	// (up false, with the reason) or comes back (up true). It runs on the
	// goroutine that saw the change and must not block.
	OnChange func(src *Source, up bool, err error)
	// OnDial, when set, is told the outcome and duration of every connect
	// from a source (health probes excluded). It is on the hot path: it
	// must not block or allocate.
	OnDial func(src *Source, took time.Duration, err error)
	// Prefer is the family tried first for a host name with addresses in
	// both, when the pool has both; Any means IPv6.
	Prefer Family
	// RateWait bounds how long a request waits for a source under the
	// pool's rate limit (Pool.SetRate) before ErrRateLimited.
	RateWait time.Duration
	// UpstreamFall is how many failures of an upstream entry in a row
	// (it cannot be reached, or refuses rotor's credentials) take it out
	// of rotation; zero means 3 (--health-fall's default).
	UpstreamFall int
}

// NewDialer returns a dialer over p.
func NewDialer(p *Pool, o DialerOptions) *Dialer {
	d := &Dialer{rateWait: o.RateWait, timeout: o.Timeout, dnsTimeout: o.DNSTimeout, resolver: o.Resolver, policy: o.Policy,
		onChange: o.OnChange, onDial: o.OnDial, prefer: o.Prefer, upstreamFall: o.UpstreamFall}
	if d.upstreamFall <= 0 {
		d.upstreamFall = 3
	}
	d.pool.Store(p)
	if d.prefer == Any {
		d.prefer = IPv6
	}
	if d.resolver == nil {
		d.resolver = net.DefaultResolver
	}
	d.net.Control = bindNoPort
	// Bounds the connect of an address target without a context per dial.
	d.net.Timeout = o.Timeout
	// No TCP keepalive probes: four setsockopt calls per connection, and
	// tunnels are bounded by rotor's own idle timeout instead.
	d.net.KeepAlive = -1
	d.free = d.net
	d.free.Control = bindFree
	// The prober shares the sockets' set-up, timeouts and resolver only.
	d.prober = &Dialer{net: d.net, free: d.free, timeout: d.timeout, dnsTimeout: d.dnsTimeout, resolver: d.resolver}
	return d
}

// Pool returns the pool the dialer picks from when a request names none.
func (d *Dialer) Pool() *Pool { return d.pool.Load() }

// SetPool replaces that pool (reload); requests that picked from the old
// one finish with it.
func (d *Dialer) SetPool(p *Pool) { d.pool.Store(p) }

// bindNoPort sets IP_BIND_ADDRESS_NO_PORT before Go binds the source
// address. Without it bind(addr, 0) reserves an ephemeral port on that
// address for every destination, so all connections from one source share
// one 28k-port range and new connections slow to a crawl once TIME_WAIT
// sockets fill it; with it the kernel picks the port at connect time, per
// destination. The option is at the IP level for IPv6 sockets too.
func bindNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// pick returns the next source of family f from the session's pool (or
// the dialer's), or the session's own source; under --per-ip-rate, one
// with a token (see Pool.admit).
func (d *Dialer) pick(ctx context.Context, f Family, s Session) (*Source, error) {
	p := d.PoolFor(s)
	var src *Source
	var err error
	if s.Key != "" {
		src, err = p.PickSession(f, s, time.Now())
	} else {
		src, err = p.Pick(f)
	}
	if err != nil || p.rate == 0 {
		return src, err
	}
	return p.admit(ctx, f, src, s.Key != "", d.rateWait)
}

// PoolFor is the pool a request of session s picks from: its own (a
// user's) or the dialer's.
func (d *Dialer) PoolFor(s Session) *Pool {
	if s.Pool != nil {
		return s.Pool
	}
	return d.Pool()
}

// Dial connects to target ("host:port") from the next source that can
// reach it, or the session's own one: see DialAddr and DialName. It
// returns the source even when the dial fails, for logging.
func (d *Dialer) Dial(ctx context.Context, target string, s Session) (net.Conn, *Source, error) {
	// A client gone already takes no source. (A loopback connect that is
	// refused at once returns before the dialer looks at ctx, so the
	// error would read "refused".)
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	host, port, err := SplitTarget(target)
	if err != nil {
		return nil, nil, err
	}
	if ip, ok := dest.ParseHost(host); ok {
		return d.DialAddr(ctx, netip.AddrPortFrom(ip, port), s)
	}
	return d.DialName(ctx, host, port, s)
}

// withRetry opens a connection over a chosen egress; if it fails on
// rotor's side (IsLocal), it is tried once more over another, and if the
// address itself is gone (AddressGone) its source leaves rotation at once
// (see OpenTCP).
func (d *Dialer) withRetry(ctx context.Context, f Family, s Session, open func(Egress) (net.Conn, error)) (net.Conn, *Source, error) {
	e, err := d.Choose(ctx, f, s)
	if err != nil {
		return nil, nil, err
	}
	c, err := open(e)
	if err == nil || !IsLocal(err) {
		return c, e.Src, err
	}
	d.noteGone(e, err)
	next, cerr := d.Choose(ctx, f, s)
	if cerr != nil || next.Src == e.Src {
		return nil, e.Src, err
	}
	c, err = open(next)
	d.noteGone(next, err)
	return c, next.Src, err
}

// IsLocal reports whether a dial failed on rotor's side of the connection:
// the source address cannot be bound, or it has no ephemeral port left
// for this destination (EADDRNOTAVAIL), or the upstream proxy entry
// failed (ErrUpstream). Either way another source may well succeed, and
// the failure says nothing about the target.
func IsLocal(err error) bool {
	return errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, ErrUpstream)
}

// AddressGone reports whether the source address itself is unusable:
// bind(2), not connect(2), failed with EADDRNOTAVAIL. With
// IP_BIND_ADDRESS_NO_PORT the port is chosen at connect, so connect's
// EADDRNOTAVAIL means ports ran out for one destination (a burst from one
// address), which must not take the address out of rotation.
func AddressGone(err error) bool {
	if se, ok := errors.AsType[*os.SyscallError](err); ok && se.Syscall != "bind" {
		return false
	}
	return errors.Is(err, syscall.EADDRNOTAVAIL)
}

// MarkDown takes src out of rotation until the health checker (package
// health) brings it back. Picks skip it meanwhile, unless every source is
// down.
func (d *Dialer) MarkDown(src *Source, err error) {
	if !src.down.CompareAndSwap(false, true) {
		return
	}
	src.changed.Store(time.Now().UnixNano())
	if d.onChange != nil {
		d.onChange(src, false, err)
	}
}

// MarkUp puts src back into rotation.
func (d *Dialer) MarkUp(src *Source) {
	if !src.down.CompareAndSwap(true, false) {
		return
	}
	src.changed.Store(time.Now().UnixNano())
	if d.onChange != nil {
		d.onChange(src, true, nil)
	}
}

// DialAddr picks the next source of dst's family (or the session's) and
// connects from it.
func (d *Dialer) DialAddr(ctx context.Context, dst netip.AddrPort, s Session) (net.Conn, *Source, error) {
	if dst.Port() == 0 {
		return nil, nil, fmt.Errorf("%w %s: port must be 1-65535", ErrBadTarget, dst)
	}
	// Refused before a source is picked, so that a forbidden address is
	// refused as such whatever families the pool has.
	if err := d.policy.Check(dst); err != nil {
		return nil, nil, err
	}
	ip := dst.Addr().Unmap()
	f := IPv6
	if ip.Is4() {
		f = IPv4
	}
	return d.withRetry(ctx, f, s, func(e Egress) (net.Conn, error) {
		return d.openTCP(ctx, e, netip.AddrPortFrom(ip, dst.Port()))
	})
}

// DialName connects to host (a name) from the next source, or the
// session's. In a pool of one family the name is resolved in that family.
// In a pool with both, it is resolved in both: a family without answers
// is never tried, and with answers in both the preferred family is tried
// first and the other joins 300 ms later, or at once if the first fails
// (RFC 8305 happy eyeballs); the first connection wins.
func (d *Dialer) DialName(ctx context.Context, host string, port uint16, s Session) (net.Conn, *Source, error) {
	if host == "" || port == 0 {
		return nil, nil, fmt.Errorf("%w %q port %d", ErrBadTarget, host, port)
	}
	if !d.PoolFor(s).Mixed() {
		return d.withRetry(ctx, Any, s, func(e Egress) (net.Conn, error) {
			return d.dialHost(ctx, e, host, port)
		})
	}
	if d.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.timeout)
		defer cancel()
	}
	ips, err := d.lookup(ctx, host, "ip")
	if err != nil {
		return nil, nil, err
	}
	var byFam [3][]netip.Addr
	for _, ip := range ips {
		ip = ip.Unmap()
		if ip.Is4() {
			byFam[IPv4] = append(byFam[IPv4], ip)
		} else {
			byFam[IPv6] = append(byFam[IPv6], ip)
		}
	}
	first, second := d.prefer, IPv4
	if first == IPv4 {
		second = IPv6
	}
	if len(byFam[first]) == 0 {
		first, second = second, Any
	}
	if len(byFam[first]) == 0 {
		return nil, nil, fmt.Errorf("resolve %s: %w: no IPv4 or IPv6 answer", host, ErrNoAddress)
	}
	attempt := func(f Family) func(context.Context) (net.Conn, *Source, error) {
		return func(ctx context.Context) (net.Conn, *Source, error) {
			return d.withRetry(ctx, f, s, func(e Egress) (net.Conn, error) {
				return d.dialAnswers(ctx, e, host, byFam[f], port)
			})
		}
	}
	if second == Any || len(byFam[second]) == 0 {
		return attempt(first)(ctx)
	}
	return happyEyeballs(ctx, attempt(first), attempt(second))
}

// openTCP connects over e to dst; the dialer's Timeout bounds it. This is
// the one place a TCP socket is bound to a pool address and connected.
func (d *Dialer) openTCP(ctx context.Context, e Egress, dst netip.AddrPort) (net.Conn, error) {
	src, local := e.Src, e.Local
	if err := d.policy.Check(dst); err != nil {
		return nil, err
	}
	if src.Up != nil {
		return d.viaUpstream(ctx, e, dst.Addr().String(), dst.Port())
	}
	if dst.Addr().Is4() != src.Addr.Is4() {
		return nil, fmt.Errorf("dial %s from %s: %w", dst, src.Label, ErrNoSource)
	}
	network := "tcp4"
	if src.Addr.Is6() {
		network = "tcp6"
	}
	var start time.Time
	if d.onDial != nil {
		start = time.Now()
	}
	nd := &d.net
	if src.Block {
		nd = &d.free
	}
	c, err := nd.DialTCP(ctx, network, netip.AddrPortFrom(local, 0), dst)
	if d.onDial != nil {
		d.onDial(src, time.Since(start), err)
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", dst, local, err)
	}
	return c, nil
}

// dialHost connects over e to host, which is resolved in the family of
// e's source when it is a name.
func (d *Dialer) dialHost(ctx context.Context, e Egress, host string, port uint16) (net.Conn, error) {
	src := e.Src
	if src.Up != nil {
		// The upstream resolves names, in whatever family it has.
		return d.viaUpstream(ctx, e, host, port)
	}
	if ip, ok := dest.ParseHost(host); ok {
		return d.openTCP(ctx, e, netip.AddrPortFrom(ip, port))
	}
	// A name: the timeout bounds resolution and connects together.
	if d.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.timeout)
		defer cancel()
	}
	lookup := "ip4"
	if src.Addr.Is6() {
		lookup = "ip6"
	}
	ips, err := d.lookup(ctx, host, lookup)
	if errors.Is(err, ErrNoSuchHost) {
		// Go reports a name without an answer of this family as it
		// reports a name that does not exist: ask for both to tell them
		// apart, and say which family the source needed.
		if _, err := d.lookup(ctx, host, "ip"); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("resolve %s: %w: it has %s addresses only, and source %s is %s",
			host, ErrNoAddress, otherFamily(src), src.Label, familyName(src))
	}
	if err != nil {
		return nil, err
	}
	return d.dialAnswers(ctx, e, host, ips, port)
}

// lookup resolves host in network ("ip", "ip4" or "ip6") within the DNS
// timeout.
func (d *Dialer) lookup(ctx context.Context, host, network string) ([]netip.Addr, error) {
	if d.dnsTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.dnsTimeout)
		defer cancel()
	}
	ips, err := d.resolver.LookupNetIP(ctx, network, host)
	if dnsErr, ok := errors.AsType[*net.DNSError](err); ok && dnsErr.IsNotFound {
		return nil, fmt.Errorf("resolve %s: %w", host, ErrNoSuchHost)
	}
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	return ips, nil
}

// familyName is "IPv4" or "IPv6", src's family; otherFamily the other.
func familyName(src *Source) string {
	if src.Addr.Is6() {
		return "IPv6"
	}
	return "IPv4"
}

func otherFamily(src *Source) string {
	if src.Addr.Is6() {
		return "IPv4"
	}
	return "IPv6"
}

// dialAnswers tries each answer of src's family in order, as net.Dial
// does, until one connects or the context ends.
func (d *Dialer) dialAnswers(ctx context.Context, e Egress, host string, ips []netip.Addr, port uint16) (net.Conn, error) {
	src := e.Src
	var firstErr error
	for _, ip := range ips {
		ip = ip.Unmap()
		if ip.Is4() != src.Addr.Is4() {
			continue
		}
		c, err := d.openTCP(ctx, e, netip.AddrPortFrom(ip, port))
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = fmt.Errorf("%s: %w", host, err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	if firstErr == nil {
		firstErr = fmt.Errorf("resolve %s: %w: it has %s addresses only, and source %s is %s",
			host, ErrNoAddress, otherFamily(src), src.Label, familyName(src))
	}
	return nil, firstErr
}

// SplitTarget splits "host:port" and checks the port.
func SplitTarget(target string) (string, uint16, error) {
	host, ps, err := net.SplitHostPort(target)
	if err != nil {
		return "", 0, fmt.Errorf("%w %q: %w", ErrBadTarget, target, err)
	}
	if host == "" {
		return "", 0, fmt.Errorf("%w %q: empty host", ErrBadTarget, target)
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("%w %q: port must be 1-65535", ErrBadTarget, target)
	}
	return host, uint16(port), nil
}

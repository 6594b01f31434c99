// Package pool holds the set of local source addresses that rotor rotates
// through and the one outbound dialer that binds each connection to the
// address chosen for it.
//
//	listener (HTTP or SOCKS5) ──Choose(family, session)──▶ Egress{Src, Local}
//	          └──────────────OpenTCP(egress, host, port)──▶ net.Conn
//
// In the path of one CONNECT or SOCKS5 request, the listener asks the
// Dialer for a connection to the target (DialName, DialAddr, Dial): the
// Dialer chooses an egress (see Egress for the seam), checks the
// destination with package dest, binds and connects, and retries once
// over another egress when the failure was on rotor's side.
//
// The pool is immutable once built (NewEntries); picking a source is one
// atomic operation (round-robin), a per-P random number (random), or a
// short CAS loop (least-recent). No pick takes a lock or allocates.
package pool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/rotor-proxy/rotor/dest"
)

// Family restricts a pick to the sources that can reach a target.
type Family uint8

const (
	// Any is used for host names: the target is resolved in the family of
	// whichever source is picked.
	Any Family = iota
	IPv4
	IPv6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return "any"
}

// FamilyOf tells which sources can dial host: IPv4 or IPv6 for an address
// literal (IPv4-mapped IPv6 counts as IPv4), Any for a name.
func FamilyOf(host string) Family {
	a, ok := dest.ParseHost(host)
	if !ok {
		return Any
	}
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// ErrNoSource is returned by Pick when the pool has no address of the
// family the target needs.
var ErrNoSource = errors.New("no source address of the target's family in the pool")

// Source is one entry of the pool: a local address, or a block from which
// each connection takes a random address.
type Source struct {
	// Addr is the address, or the block's first address.
	Addr netip.Addr
	// Prefix is Addr/32 or Addr/128 for an address, the block otherwise.
	Prefix netip.Prefix
	// Block is true for a block: connections bind a random address in it
	// (see Local).
	Block bool
	// Index is unique among the sources of a pool and of every pool rebuilt
	// from it (see Rebuild): callers index per-source tables by it.
	Index int
	// Label names the source in metrics and logs: the pool entry as
	// configured (an upstream's without its credentials). Precomputed, so
	// no request formats it.
	Label string
	// Up is set for an upstream proxy entry, whose connections are
	// tunnelled by it; Addr and Prefix are then invalid.
	Up *Upstream
	// lastPick is the pool-wide pick sequence number at this source's last
	// pick (least-recent strategy). Padded so that neighbouring sources do
	// not share a cache line.
	lastPick atomic.Uint64
	// down is set while the address is out of rotation: it could not be
	// bound, or active health probes failed. The health checker clears it.
	down atomic.Bool
	// gone is set while the address is removed from the host, as the
	// kernel's address events tell (see WatchAddresses).
	gone atomic.Bool
	// changed is when down last changed, in unix nanoseconds (0: never).
	changed atomic.Int64
	// limiter caps how often the source is used (--per-ip-rate); nil: no
	// cap.
	limiter *rate.Limiter
	// A block's address as two big-endian halves, and the mask of its
	// host bits (IPv4: the low 32 bits of lo).
	baseHi, baseLo uint64
	hostHi, hostLo uint64
	_              [32]byte
}

// Down reports whether the address is out of rotation.
func (s *Source) Down() bool { return s.down.Load() }

// Changed is when the source last went out of or back into rotation; the
// zero Time if it never has.
func (s *Source) Changed() time.Time {
	if n := s.changed.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

func (s *Source) String() string { return s.Addr.String() }

// Pool is an immutable list of source addresses with a selection strategy.
type Pool struct {
	sources []*Source
	// byFamily[f] picks among the sources usable for Family f. When the
	// pool holds one family only, all entries share one picker, so that
	// round-robin order is strict across address targets and name targets.
	byFamily [3]*picker
	mixed    bool // local sources of both families (Mixed)
	strategy Strategy
	rate     float64 // per source per second (SetRate); 0: no cap
	burst    int
	// nextIndex is the Index the next new source gets (see Rebuild).
	nextIndex int
}

// Single is the pool entry for one address: its /32 or /128.
func Single(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen())
}

// NewEntries checks every entry and builds the pool: an address must be
// bindable on this host, a block must be routed to it as local (see
// checkBlock); upstream proxy entries (ParseUpstream) follow the local
// ones in the rotation. The first entry that fails is named in the error.
func NewEntries(entries []netip.Prefix, ups []*Upstream, strategy Strategy) (*Pool, error) {
	return newPool(entries, ups, strategy, true, nil)
}

// Rebuild is a pool of entries that keeps old's Source object for every
// entry old already had, so that its health state, rate bucket, metrics
// and pooled upstream connections carry over; only new entries are
// checked. New sources get indices above any old has used, so per-source
// tables indexed by Source.Index stay valid for both pools.
func Rebuild(old *Pool, entries []netip.Prefix, ups []*Upstream) (*Pool, error) {
	p, err := newPool(entries, ups, old.strategy, true, old)
	if err != nil {
		return nil, err
	}
	p.SetRate(old.rate, old.burst)
	return p, nil
}

// MaxIndex is one more than the largest Source.Index in the pool or any
// pool it was rebuilt from: the size per-source tables need.
func (p *Pool) MaxIndex() int { return p.nextIndex }

// NewUnchecked builds a pool without binding or route checks, for
// measuring picks (rotorbench pick) on hosts where the entries are not
// configured. Dials from it fail unless the entries are in fact usable.
func NewUnchecked(entries []netip.Prefix, strategy Strategy) (*Pool, error) {
	return newPool(entries, nil, strategy, false, nil)
}

func newPool(entries []netip.Prefix, ups []*Upstream, strategy Strategy, check bool, old *Pool) (*Pool, error) {
	if len(entries)+len(ups) == 0 {
		return nil, errors.New("pool is empty")
	}
	p := &Pool{strategy: strategy}
	kept := map[netip.Prefix]*Source{}
	keptUp := map[string]*Source{}
	if old != nil {
		p.nextIndex = old.nextIndex
		for _, s := range old.sources {
			if s.Up != nil {
				keptUp[s.Up.Key] = s
			} else {
				kept[s.Prefix] = s
			}
		}
	}
	for i, e := range entries {
		e = netip.PrefixFrom(e.Addr().Unmap(), e.Bits()).Masked()
		if !e.IsValid() {
			return nil, fmt.Errorf("pool entry %v is not valid", entries[i])
		}
		for _, o := range p.sources {
			if o.Prefix.Overlaps(e) {
				return nil, fmt.Errorf("pool entry %s overlaps %s", e, o.Prefix)
			}
		}
		s := kept[e]
		if s == nil {
			s = newSource(e, p.nextIndex)
			p.nextIndex++
			if check {
				if err := s.Check(); err != nil {
					return nil, err
				}
			}
		}
		p.sources = append(p.sources, s)
	}
	labels := map[string]bool{}
	for _, up := range ups {
		if labels[up.Key] {
			return nil, fmt.Errorf("upstream entry %s is listed twice", up.Label())
		}
		labels[up.Key] = true
		s := keptUp[up.Key]
		if s != nil {
			s.Up.Tags = up.Tags // the file's tags may have changed
		} else {
			s = &Source{Up: up, Label: up.Label(), Index: p.nextIndex}
			p.nextIndex++
			// A via= address must be bindable, as a local entry's; the
			// upstream itself may be down now, which health follows.
			if check && up.Via.IsValid() {
				if err := checkBindable(up.Via); err != nil {
					return nil, fmt.Errorf("upstream entry %s via=%s: %w", up.Label(), up.Via, err)
				}
			}
		}
		p.sources = append(p.sources, s)
	}
	if _, err := ParseStrategy(string(strategy)); err != nil {
		return nil, err
	}
	p.setPickers()
	return p, nil
}

// setPickers builds the per-family pickers of a pool whose sources and
// (valid) strategy are set. An upstream entry reaches either family (it
// resolves names itself): it is in both families' pickers.
func (p *Pool) setPickers() {
	var v4, v6, any4, any6 []*Source
	for _, s := range p.sources {
		switch {
		case s.Up != nil:
			v4, v6 = append(v4, s), append(v6, s)
		case s.Addr.Is4():
			v4, any4 = append(v4, s), append(any4, s)
		default:
			v6, any6 = append(v6, s), append(any6, s)
		}
	}
	seq := new(atomic.Uint64) // shared by all least-recent pickers of this pool
	all, _ := newPicker(p.strategy, p.sources, seq)
	p.byFamily[Any] = all
	p.byFamily[IPv4], p.byFamily[IPv6] = all, all
	p.mixed = len(any4) > 0 && len(any6) > 0
	for f, list := range map[Family][]*Source{IPv4: v4, IPv6: v6} {
		switch {
		case len(list) == 0:
			p.byFamily[f] = nil
		case len(list) < len(p.sources):
			p.byFamily[f], _ = newPicker(p.strategy, list, seq)
		}
	}
}

func newSource(e netip.Prefix, index int) *Source {
	a := e.Addr()
	s := &Source{Addr: a, Prefix: e, Index: index, Block: e.Bits() < a.BitLen()}
	s.Label = a.String()
	if s.Block {
		s.Label = e.String()
		b := a.As16()
		s.baseHi, s.baseLo = binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
		hostBits := a.BitLen() - e.Bits()
		switch {
		case hostBits >= 64:
			s.hostLo = ^uint64(0)
			s.hostHi = ^uint64(0) >> (128 - hostBits)
		default:
			s.hostLo = ^uint64(0) >> (64 - hostBits)
		}
		if a.Is4() {
			// As16 of an IPv4 address is the mapped form: only the low
			// 32 bits of lo are the address.
			s.baseHi, s.baseLo = 0, uint64(binary.BigEndian.Uint32(b[12:]))
		}
	}
	return s
}

// Check reports whether the source's entry can be used now: its address
// bound, its block routed to the host (see checkBindable and checkBlock).
// Start-up checks every entry; the health checker re-checks a down one.
func (s *Source) Check() error {
	if s.Up != nil {
		return s.Up.check()
	}
	if s.Block {
		return checkBlock(s)
	}
	return checkBindable(s.Addr)
}

// checkBindable binds a throwaway TCP socket to a so that an address that
// is not configured on this host fails at start-up, not on the first
// request.
func checkBindable(a netip.Addr) error {
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
	if err != nil {
		return fmt.Errorf("address %s cannot be bound on this host (add it with `ip addr add %s/%d dev IFACE`): %w",
			a, a, a.BitLen(), err)
	}
	return ln.Close()
}

// Pick returns the next source able to reach a target of family f.
func (p *Pool) Pick(f Family) (*Source, error) {
	pk := p.byFamily[f]
	if pk == nil {
		return nil, noSource(f)
	}
	return pk.pick(), nil
}

func noSource(f Family) error {
	return fmt.Errorf("%w: target is %s, pool has none", ErrNoSource, f)
}

// Subset is a pool over some of p's sources, for a user restricted to
// them. The sources are shared, not copied: their health state, metrics
// and upstream connections are the same objects; the subset rotates
// through them on its own.
func (p *Pool) Subset(sources []*Source) (*Pool, error) {
	if len(sources) == 0 {
		return nil, errors.New("pool is empty")
	}
	q := &Pool{strategy: p.strategy, sources: sources, rate: p.rate, burst: p.burst, nextIndex: p.nextIndex}
	q.setPickers()
	return q, nil
}

// Mixed reports whether the pool has local sources of both families (a
// name is then resolved here, in both).
func (p *Pool) Mixed() bool { return p.mixed }

// Sources returns the pool's sources in configuration order. The slice
// must not be modified.
func (p *Pool) Sources() []*Source { return p.sources }

// Strategy returns the pool's selection strategy.
func (p *Pool) Strategy() Strategy { return p.strategy }

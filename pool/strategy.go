package pool

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"sync/atomic"
)

// Strategy names a way of picking the next source.
type Strategy string

const (
	RoundRobin  Strategy = "round-robin"
	Random      Strategy = "random"
	LeastRecent Strategy = "least-recent"
)

// Strategies lists the valid strategy names.
var Strategies = []Strategy{RoundRobin, Random, LeastRecent}

// StrategyChoices is Strategies as people write a list, for help texts
// and errors.
const StrategyChoices = "round-robin, random or least-recent"

// ParseStrategy returns the strategy called name, or an error naming it.
func ParseStrategy(name string) (Strategy, error) {
	for _, s := range Strategies {
		if string(s) == name {
			return s, nil
		}
	}
	return "", fmt.Errorf("unknown strategy %q (want %s)", name, StrategyChoices)
}

// picker picks among one family's sources. A struct with a switch, not an
// interface: the call inlines, and a pick is a few nanoseconds.
type picker struct {
	next    atomic.Uint64 // round-robin counter
	_       [56]byte      // keep the hot counter on its own cache line
	kind    uint8         // kindRoundRobin, kindRandom, kindLeastRecent
	sources []*Source
	n       uint64
	magic   uint64         // fastmod multiplier for n
	seq     *atomic.Uint64 // least-recent: the pool's pick sequence
}

const (
	kindRoundRobin uint8 = iota
	kindRandom
	kindLeastRecent
)

func newPicker(s Strategy, sources []*Source, seq *atomic.Uint64) (*picker, error) {
	var kind uint8
	switch s {
	case RoundRobin:
		kind = kindRoundRobin
	case Random:
		kind = kindRandom
	case LeastRecent:
		kind = kindLeastRecent
	default:
		return nil, fmt.Errorf("unknown strategy %q (want %s)", s, StrategyChoices)
	}
	n := uint64(len(sources))
	return &picker{kind: kind, sources: sources, n: n, magic: ^uint64(0)/n + 1, seq: seq}, nil
}

// pick returns the next source that is not down; when every source is
// down it returns one anyway, so that rotor keeps trying them all rather
// than refusing all traffic.
func (p *picker) pick() *Source {
	s := p.pickAny()
	if !s.down.Load() {
		return s
	}
	// Round-robin and least-recent reach every source within n picks;
	// random may not, so end with a scan.
	for i := uint64(1); i < p.n; i++ {
		if t := p.pickAny(); !t.down.Load() {
			return t
		}
	}
	for _, t := range p.sources {
		if !t.down.Load() {
			return t
		}
	}
	return s
}

func (p *picker) pickAny() *Source {
	if p.kind == kindRoundRobin {
		// Strict order for all callers: one atomic add. The index is the
		// counter's low 32 bits mod n by Lemire's fastmod (a multiply, not a
		// division); at the 2^32 wrap the order skips once.
		hi, _ := bits.Mul64(p.magic*uint64(uint32(p.next.Add(1)-1)), p.n)
		return p.sources[hi]
	}
	return p.pickOther()
}

func (p *picker) pickOther() *Source {
	if p.kind == kindRandom {
		// math/rand/v2's global generator draws from per-thread runtime
		// state: no shared lock, no allocation.
		return p.sources[rand.Uint64N(p.n)]
	}
	return p.leastRecent()
}

// leastRecent picks the source whose last pick is oldest, i.e. the one idle
// longest. A pool-wide sequence number orders picks; the CAS on the chosen
// source's stamp makes two concurrent callers that saw the same oldest
// source retry instead of both taking it. Cost grows with the pool size:
// it scans every source.
func (p *picker) leastRecent() *Source {
	for {
		best := p.sources[0]
		oldest := best.lastPick.Load()
		for _, s := range p.sources[1:] {
			if v := s.lastPick.Load(); v < oldest {
				best, oldest = s, v
			}
		}
		if best.lastPick.CompareAndSwap(oldest, p.seq.Add(1)) {
			return best
		}
	}
}

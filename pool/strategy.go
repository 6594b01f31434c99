package pool

import (
	"fmt"
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

// Strategies lists the valid strategy names, for help texts and errors.
var Strategies = []Strategy{RoundRobin, Random, LeastRecent}

// ParseStrategy returns the strategy called name, or an error naming it.
func ParseStrategy(name string) (Strategy, error) {
	for _, s := range Strategies {
		if string(s) == name {
			return s, nil
		}
	}
	return "", fmt.Errorf("unknown strategy %q (want one of %v)", name, Strategies)
}

type picker interface {
	pick() *Source
}

func newPicker(s Strategy, sources []*Source, seq *atomic.Uint64) (picker, error) {
	switch s {
	case RoundRobin:
		return &roundRobin{sources: sources}, nil
	case Random:
		return &random{sources: sources}, nil
	case LeastRecent:
		return &leastRecent{sources: sources, seq: seq}, nil
	}
	return nil, fmt.Errorf("unknown strategy %q (want one of %v)", s, Strategies)
}

// roundRobin hands out sources in strict order to all callers: one atomic
// add per pick.
type roundRobin struct {
	next    atomic.Uint64
	sources []*Source
}

func (r *roundRobin) pick() *Source {
	n := r.next.Add(1) - 1
	return r.sources[n%uint64(len(r.sources))]
}

// random uses math/rand/v2's global generator, which draws from per-thread
// runtime state: no shared lock, no allocation.
type random struct {
	sources []*Source
}

func (r *random) pick() *Source {
	return r.sources[rand.IntN(len(r.sources))]
}

// leastRecent picks the source whose last pick is oldest, i.e. the one idle
// longest. A pool-wide sequence number orders picks; the CAS on the chosen
// source's stamp makes two concurrent callers that saw the same oldest
// source retry instead of both taking it. Cost grows with the pool size:
// it scans every source.
type leastRecent struct {
	seq     *atomic.Uint64
	sources []*Source
}

func (l *leastRecent) pick() *Source {
	for {
		best := l.sources[0]
		oldest := best.lastPick.Load()
		for _, s := range l.sources[1:] {
			if v := s.lastPick.Load(); v < oldest {
				best, oldest = s, v
			}
		}
		if best.lastPick.CompareAndSwap(oldest, l.seq.Add(1)) {
			return best
		}
	}
}

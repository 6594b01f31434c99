package pool

import "time"

// Session pins every request or connection of one client session to one
// source address. The address is derived from the key, not stored: rotor
// keeps no per-session state, sessions survive restarts, and two rotor
// instances with the same pool agree.
type Session struct {
	Key string
	// TTL, when positive, moves the session to another address after this
	// long; each key's period starts at its own offset, so sessions do not
	// all move at once.
	TTL time.Duration
	// Pool, when set, is the part of the pool the request may leave from
	// (a user's pool); nil means the dialer's whole pool.
	Pool *Pool
}

// PickSession returns the session's source among those of family f, by
// rendezvous (highest random weight) hashing: each source scores
// hash(key, period, source) and the highest wins, so removing a source
// moves only the sessions that were on it.
func (p *Pool) PickSession(f Family, s Session, now time.Time) (*Source, error) {
	pk := p.byFamily[f]
	if pk == nil {
		return nil, noSource(f)
	}
	return pickRendezvous(pk.sources, s, now), nil
}

// sessionHash hashes the session's key with its current TTL period.
func sessionHash(s Session, now time.Time) uint64 {
	var period uint64
	if s.TTL > 0 {
		offset := mix(fnv(fnvOffset, s.Key)) % uint64(s.TTL)
		period = (uint64(now.UnixNano()) + offset) / uint64(s.TTL)
	}
	return fnv(fnvUint64(fnvOffset, period), s.Key)
}

func pickRendezvous(sources []*Source, s Session, now time.Time) *Source {
	keyHash := sessionHash(s, now)
	var best, bestDown *Source
	var bestScore, bestDownScore uint64
	for _, src := range sources {
		h := keyHash
		if src.Up != nil {
			// An upstream entry scores by the entry as configured: the
			// same on every rotor given the same pool, so that gateways
			// send a session to the same upstream.
			h = fnv(h, src.Up.Key)
		} else {
			a := src.Addr.As16()
			for _, b := range a {
				h = (h ^ uint64(b)) * fnvPrime
			}
		}
		// A down source is left out, so only the sessions on it move;
		// if all are down, the best of them is used anyway.
		score := mix(h)
		if src.down.Load() {
			if bestDown == nil || score > bestDownScore {
				bestDown, bestDownScore = src, score
			}
			continue
		}
		if best == nil || score > bestScore {
			best, bestScore = src, score
		}
	}
	if best == nil {
		return bestDown
	}
	return best
}

// A fixed, seedless hash: every process must derive the same address for
// a key. FNV-1a, finished with splitmix64's mixer for even scores.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnv(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * fnvPrime
	}
	return h
}

func fnvUint64(h, v uint64) uint64 {
	for i := 0; i < 8; i++ {
		h = (h ^ (v & 0xff)) * fnvPrime
		v >>= 8
	}
	return h
}

func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

package pool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"
)

// ErrRateLimited is returned when every source that could serve a
// request used up its --per-ip-rate and none freed up in time.
var ErrRateLimited = errors.New("every source address is at its rate limit")

// SetRate caps how often each source is used: perSecond, with bursts of
// burst (at least 1). Call it before the pool serves; Rebuild carries the
// limit and each kept source's bucket over to the new pool. A block is
// one source: its addresses share the bucket.
func (p *Pool) SetRate(perSecond float64, burst int) {
	if perSecond <= 0 {
		return
	}
	if burst < 1 {
		burst = max(1, int(perSecond))
	}
	p.rate, p.burst = perSecond, burst
	for _, s := range p.sources {
		if s.limiter == nil {
			s.limiter = rate.NewLimiter(rate.Limit(perSecond), burst)
		}
	}
}

// admit returns first if it has a token. Otherwise a rotating request
// takes the next source of its family that has one; a session waits for
// its own source, since moving it would break the session. With no token
// anywhere, it waits up to wait, then fails with ErrRateLimited.
func (p *Pool) admit(ctx context.Context, f Family, first *Source, sticky bool, wait time.Duration) (*Source, error) {
	if first.limiter == nil || first.limiter.Allow() {
		return first, nil
	}
	pk := p.byFamily[f]
	deadline := time.Now().Add(wait)
	// Poll at a fraction of the interval between tokens: a token frees up
	// somewhere about every 1/(rate*n) seconds.
	n := len(pk.sources)
	if sticky {
		n = 1
	}
	step := max(time.Millisecond, time.Duration(float64(time.Second)/(p.rate*float64(n))/2))
	var timer *time.Timer
	for {
		if !sticky {
			start := 0
			for i, s := range pk.sources {
				if s == first {
					start = i
					break
				}
			}
			// Down sources are skipped, as picks skip them, unless all
			// are down.
			for pass := 0; pass < 2; pass++ {
				for i := 1; i <= len(pk.sources); i++ {
					s := pk.sources[(start+i)%len(pk.sources)]
					if (pass == 1 || !s.Down()) && s.limiter.Allow() {
						return s, nil
					}
				}
			}
		} else if first.limiter.Allow() {
			return first, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("%w (%g/s each); waited %s", ErrRateLimited, p.rate, wait)
		}
		d := min(step, left)
		if timer == nil {
			timer = time.NewTimer(d)
			defer timer.Stop()
		} else {
			timer.Reset(d)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
		}
	}
}

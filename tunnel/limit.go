package tunnel

import (
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Limiter caps the client connections both listeners serve at once, so
// that rotor never runs out of descriptors mid-request: at the cap a new
// client is refused cleanly (HTTP 503, SOCKS5 close) while everyone
// already connected carries on. The zero or nil Limiter has no cap.
type Limiter struct {
	max     int64
	n       atomic.Int64
	refused atomic.Int64
	lastLog atomic.Int64 // unix nanoseconds
	log     zerolog.Logger
}

// NewLimiter returns a limiter for max connections; max <= 0 means none.
// Each Tracker counts its own refusals in its Hits.
func NewLimiter(max int64, log zerolog.Logger) *Limiter {
	return &Limiter{max: max, log: log}
}

// Acquire takes a slot; false means the cap is reached (logged, at most
// once a second with the count refused since).
func (l *Limiter) Acquire() bool {
	if l == nil || l.max <= 0 {
		return true
	}
	if l.n.Add(1) > l.max {
		l.n.Add(-1)
		l.refused.Add(1)
		now := time.Now().UnixNano()
		if last := l.lastLog.Load(); now-last >= int64(time.Second) && l.lastLog.CompareAndSwap(last, now) {
			l.log.Warn().Str("limit", "max-conns").Int64("max", l.max).Int64("refused", l.refused.Swap(0)).
				Msg("connection limit reached; refusing new clients")
		}
		return false
	}
	return true
}

// Release gives a slot back.
func (l *Limiter) Release() {
	if l == nil || l.max <= 0 {
		return
	}
	l.n.Add(-1)
}

// InUse returns the slots taken.
func (l *Limiter) InUse() int64 {
	if l == nil {
		return 0
	}
	return l.n.Load()
}

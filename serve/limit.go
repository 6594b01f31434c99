package serve

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
	reclaim atomic.Pointer[[]func() bool]
}

// NewLimiter returns a limiter for max connections; max <= 0 means none.
// Each Tracker counts its own refusals in its Hits.
func NewLimiter(max int64, log zerolog.Logger) *Limiter {
	return &Limiter{max: max, log: log}
}

// AddReclaim gives the limiter a way to free a slot when a client finds
// none: f closes something idle that holds one (an idle upstream
// connection) and reports whether it did. Idle connections are then
// closed, oldest first, instead of refusing new work. Each HTTP server
// (one per HTTP listener) adds its own; they are tried in turn.
func (l *Limiter) AddReclaim(f func() bool) {
	if l == nil {
		return
	}
	for {
		old := l.reclaim.Load()
		var fs []func() bool
		if old != nil {
			fs = append(fs, *old...)
		}
		fs = append(fs, f)
		if l.reclaim.CompareAndSwap(old, &fs) {
			return
		}
	}
}

// reclaimOne asks each reclaim function in turn until one frees a slot.
func (l *Limiter) reclaimOne() bool {
	if fs := l.reclaim.Load(); fs != nil {
		for _, f := range *fs {
			if f() {
				return true
			}
		}
	}
	return false
}

// TryAcquire takes a slot if one is free, without logging or counting a
// refusal: for idle upstream connections, which hold a descriptor too.
func (l *Limiter) TryAcquire() bool {
	if l == nil || l.max <= 0 {
		return true
	}
	if l.n.Add(1) > l.max {
		l.n.Add(-1)
		return false
	}
	return true
}

// Acquire takes a slot for a client, closing an idle upstream connection
// to free one if it must; false means the cap is reached (logged, at most
// once a second with the count refused since).
func (l *Limiter) Acquire() bool {
	if l == nil || l.max <= 0 {
		return true
	}
	if l.TryAcquire() {
		return true
	}
	if l.reclaimOne() && l.TryAcquire() {
		return true
	}
	if l.n.Add(1) > l.max {
		l.n.Add(-1)
		l.refused.Add(1)
		now := time.Now().UnixNano()
		if last := l.lastLog.Load(); now-last >= int64(time.Second) && l.lastLog.CompareAndSwap(last, now) {
			l.log.Warn().Stringer("limit", MaxConns).Int64("max", l.max).Int64("refused", l.refused.Swap(0)).
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

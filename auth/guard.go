package auth

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Back-off of a client address that keeps failing to authenticate: each
// failure takes a token from its bucket, which holds backoffBurst and
// refills one every backoffRefill; with none left, its attempts are
// refused unchecked until one has refilled. A user who mistypes a
// password a few times is not slowed; a guesser gets one guess per
// backoffRefill, and a flood of wrong passwords costs one bcrypt per
// refill instead of one per attempt.
const (
	backoffBurst   = 5
	backoffRefill  = 2 * time.Second
	backoffShards  = 16
	backoffClients = 4096 // per shard: 65,536 client addresses followed at most
)

// ErrBackoff is an attempt refused without checking its credentials,
// because its client address failed too often recently.
var ErrBackoff = errors.New("too many failed logins from this address")

// BackoffError is ErrBackoff with when the next attempt will be checked.
type BackoffError struct{ RetryAfter time.Duration }

func (e *BackoffError) Error() string {
	return fmt.Sprintf("%v; retry in %s", ErrBackoff, e.RetryAfter.Round(100*time.Millisecond))
}

func (e *BackoffError) Is(target error) bool { return target == ErrBackoff }

// Guard keeps password checking available under a flood of wrong
// passwords: it backs off client addresses that keep failing, and it
// gives bcrypt comparisons (tens of milliseconds of CPU each, by design)
// their turn round-robin between client addresses rather than first come,
// first served, so that one address's flood does not delay another's
// login. One Guard serves a whole run: it outlives reloads.
type Guard struct {
	shards [backoffShards]backoffShard
	queue  fairQueue
	// compare is bcrypt.CompareHashAndPassword and now time.Now; tests
	// count the one and move the other.
	compare func(hash, pass []byte) error
	now     func() time.Time
}

// NewGuard returns a Guard that runs at most half the CPUs' worth of
// bcrypt comparisons at once (at least one), leaving the rest to the
// requests already admitted.
func NewGuard() *Guard {
	return newGuard(max(1, runtime.GOMAXPROCS(0)/2))
}

func newGuard(workers int) *Guard {
	g := &Guard{compare: bcrypt.CompareHashAndPassword, now: time.Now}
	g.queue.free = workers
	for i := range g.shards {
		g.shards[i].m = make(map[netip.Addr]*bucket)
	}
	return g
}

// clientKey is what back-off and fairness count by: an IPv4 address, or
// an IPv6 address's /64, which one host usually holds whole.
func clientKey(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// bcryptCompare runs one comparison when client's turn comes. An attempt
// whose client went into back-off while it waited is refused unchecked; a
// failed comparison is recorded against client before the turn passes on,
// so that the next waiter from client already sees it. A nil Guard
// compares at once and records nothing (tests, tools).
func (g *Guard) bcryptCompare(client netip.Addr, hash, pass []byte) error {
	if g == nil {
		return bcrypt.CompareHashAndPassword(hash, pass)
	}
	g.queue.acquire(clientKey(client))
	defer g.queue.release()
	if err := g.backingOff(client); err != nil {
		return err
	}
	err := g.compare(hash, pass)
	if err != nil {
		g.failed(client)
	}
	return err
}

// backingOff returns a *BackoffError while client's failures have used
// up its bucket.
func (g *Guard) backingOff(client netip.Addr) error {
	if g == nil {
		return nil
	}
	key := clientKey(client)
	if wait := g.shard(key).wait(key, g.now); wait > 0 {
		return &BackoffError{RetryAfter: wait}
	}
	return nil
}

// failed records a failed attempt from client.
func (g *Guard) failed(client netip.Addr) {
	if g == nil {
		return
	}
	key := clientKey(client)
	g.shard(key).take(key, g.now())
}

func (g *Guard) shard(key netip.Addr) *backoffShard {
	b := key.As16()
	h := uint32(2166136261) // FNV-1a
	for _, c := range b {
		h = (h ^ uint32(c)) * 16777619
	}
	return &g.shards[h%backoffShards]
}

// bucket is one client address's failure budget.
type bucket struct {
	tokens float64
	at     time.Time // when tokens was last brought up to date
}

func (b *bucket) refill(now time.Time) {
	b.tokens = min(backoffBurst, b.tokens+float64(now.Sub(b.at))/float64(backoffRefill))
	b.at = now
}

// backoffShard is a part of the back-off table, with its own lock: it is
// touched only by failures and by attempts from addresses that failed.
type backoffShard struct {
	mu sync.Mutex
	m  map[netip.Addr]*bucket
	// n is len(m), kept under mu: every login checks its address, and
	// while no address of the shard has failed (the usual case) that
	// check is one atomic load, without the lock or the clock.
	n atomic.Int32
}

// wait is how long until key may try again, 0 if it may now.
func (s *backoffShard) wait(key netip.Addr, now func() time.Time) time.Duration {
	if s.n.Load() == 0 {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.m[key]
	if b == nil {
		return 0
	}
	b.refill(now())
	if b.tokens >= backoffBurst {
		// Refilled: as if it never failed. Forgetting it keeps the
		// shard small and, once all are forgotten, the check lock-free.
		delete(s.m, key)
		s.n.Store(int32(len(s.m)))
		return 0
	}
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - b.tokens) * float64(backoffRefill))
}

// take spends one of key's tokens for a failure.
func (s *backoffShard) take(key netip.Addr, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.m[key]
	if b == nil {
		if len(s.m) >= backoffClients {
			s.evict(now)
		}
		b = &bucket{tokens: backoffBurst, at: now}
		s.m[key] = b
		s.n.Store(int32(len(s.m)))
	}
	b.refill(now)
	b.tokens = max(0, b.tokens-1)
}

// evict makes room in a full shard: addresses whose bucket has refilled
// are forgotten (they are as if never seen); then, if that freed less
// than an eighth, arbitrary ones until it has, so memory stays bounded
// whatever addresses fail and the scan runs once per many failures.
func (s *backoffShard) evict(now time.Time) {
	for k, b := range s.m {
		if b.refill(now); b.tokens >= backoffBurst {
			delete(s.m, k)
		}
	}
	for k := range s.m {
		if len(s.m) <= backoffClients*7/8 {
			break
		}
		delete(s.m, k)
	}
	s.n.Store(int32(len(s.m)))
}

// fairQueue hands out a fixed number of slots. When none is free, waiters
// queue per client and the slot released goes to the next client in
// round-robin order, each client's own waiters in arrival order: a client
// with a hundred waiters delays another client's one by at most one turn
// per client ahead of it.
type fairQueue struct {
	mu      sync.Mutex
	free    int
	waiting map[netip.Addr][]chan struct{}
	order   []netip.Addr // clients with waiters, next to serve first
}

func (q *fairQueue) acquire(key netip.Addr) {
	q.mu.Lock()
	if q.free > 0 && len(q.order) == 0 {
		q.free--
		q.mu.Unlock()
		return
	}
	if q.waiting == nil {
		q.waiting = make(map[netip.Addr][]chan struct{})
	}
	ch := make(chan struct{})
	w, queued := q.waiting[key]
	q.waiting[key] = append(w, ch)
	if !queued {
		q.order = append(q.order, key)
	}
	q.mu.Unlock()
	<-ch // the slot passes straight to this waiter
}

func (q *fairQueue) release() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.order) == 0 {
		q.free++
		return
	}
	key := q.order[0]
	q.order = q.order[1:]
	w := q.waiting[key]
	ch := w[0]
	if w = w[1:]; len(w) == 0 {
		delete(q.waiting, key)
	} else {
		q.waiting[key] = w
		q.order = append(q.order, key) // to the back: the others go first
	}
	close(ch)
}

package auth

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// guardedUsers is a users file with one bcrypt user, "alice", and a
// Guard of one worker whose comparisons are counted and whose clock the
// test moves.
func guardedUsers(t *testing.T) (*Users, *Guard, *atomic.Int64, *time.Time) {
	t.Helper()
	specs, err := ParseUsers(strings.NewReader(bcryptLine(t, "alice", "right") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	u, err := Build(specs, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := newGuard(1)
	var compares atomic.Int64
	g.compare = func(hash, pass []byte) error {
		compares.Add(1)
		return bcrypt.CompareHashAndPassword(hash, pass)
	}
	now := time.Unix(1_800_000_000, 0)
	g.now = func() time.Time { return now }
	return u, g, &compares, &now
}

// After backoffBurst failures from one address, its attempts are refused
// unchecked, a right password included, with when to retry; other
// addresses are not affected, an IPv6 /64 counts as one address, and the
// address gets one attempt per backoffRefill after that.
func TestBackoffAfterFailures(t *testing.T) {
	u, g, compares, now := guardedUsers(t)
	a := netip.MustParseAddr("2001:db8::1")
	for i := range backoffBurst {
		if _, err := u.Check(g, a, []byte("alice"), []byte(fmt.Sprint("guess", i))); !errors.Is(err, errBadCredentials) {
			t.Fatalf("guess %d: %v, want wrong credentials", i, err)
		}
	}
	for _, c := range []struct{ from, pass string }{{"2001:db8::1", "guess"}, {"2001:db8::99", "right"}} {
		_, err := u.Check(g, netip.MustParseAddr(c.from), []byte("alice"), []byte(c.pass))
		var be *BackoffError
		if !errors.As(err, &be) || !errors.Is(err, ErrBackoff) || be.RetryAfter <= 0 || be.RetryAfter > backoffRefill {
			t.Errorf("from %s after %d failures: %v, want a back-off of at most %s", c.from, backoffBurst, err, backoffRefill)
		}
	}
	if n := compares.Load(); n != backoffBurst {
		t.Errorf("%d bcrypt comparisons, want %d: attempts in back-off must not run bcrypt", n, backoffBurst)
	}
	if usr, err := u.Check(g, netip.MustParseAddr("192.0.2.7"), []byte("alice"), []byte("right")); err != nil || usr == nil {
		t.Errorf("another address: %v", err)
	}
	*now = now.Add(backoffRefill)
	if _, err := u.Check(g, a, []byte("alice"), []byte("right")); err != nil {
		t.Errorf("after one refill: %v", err)
	}
	if _, err := u.Check(g, a, []byte("alice"), []byte("wrong")); !errors.Is(err, errBadCredentials) {
		t.Errorf("after one refill: %v, want one checked attempt", err)
	}
	if _, err := u.Check(g, a, []byte("alice"), []byte("wrong")); !errors.Is(err, ErrBackoff) {
		t.Errorf("second attempt after one refill: %v, want back-off", err)
	}
}

// Attempts that were already waiting for bcrypt when their address went
// into back-off are refused at their turn without running it: 64
// concurrent wrong passwords from one address cost backoffBurst
// comparisons, unknown names included.
func TestBackoffCutsQueuedFlood(t *testing.T) {
	u, g, compares, _ := guardedUsers(t)
	a := netip.MustParseAddr("198.51.100.9")
	var wg sync.WaitGroup
	var backoffs atomic.Int64
	for i := range 64 {
		wg.Go(func() {
			name := "alice"
			if i%2 == 1 {
				name = "nobody"
			}
			if _, err := u.Check(g, a, []byte(name), []byte("wrong")); errors.Is(err, ErrBackoff) {
				backoffs.Add(1)
			} else if !errors.Is(err, errBadCredentials) {
				t.Errorf("attempt %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if n := compares.Load(); n != backoffBurst {
		t.Errorf("%d bcrypt comparisons for 64 wrong passwords, want %d", n, backoffBurst)
	}
	if n := backoffs.Load(); n != 64-backoffBurst {
		t.Errorf("%d refused by back-off, want %d", n, 64-backoffBurst)
	}
}

// With every slot taken, a released slot goes to the next client in
// turn, not to the oldest waiter: B's one waiter is served after A's
// first, not after all of A's.
func TestFairQueueRoundRobin(t *testing.T) {
	var q fairQueue
	q.free = 1
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	q.acquire(a)
	waiters := func() int {
		q.mu.Lock()
		defer q.mu.Unlock()
		n := 0
		for _, w := range q.waiting {
			n += len(w)
		}
		return n
	}
	served := make(chan string, 4)
	var wg sync.WaitGroup
	for i, c := range []netip.Addr{a, a, a, b} {
		wg.Go(func() {
			q.acquire(c)
			served <- fmt.Sprint(c, "#", i)
			q.release()
		})
		for waiters() != i+1 { // queued in this order
			time.Sleep(time.Millisecond)
		}
	}
	q.release()
	wg.Wait()
	close(served)
	var got []string
	for s := range served {
		got = append(got, s)
	}
	want := []string{"192.0.2.1#0", "192.0.2.2#3", "192.0.2.1#1", "192.0.2.1#2"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("served %v, want %v", got, want)
	}
	if q.free != 1 || len(q.order) != 0 || len(q.waiting) != 0 {
		t.Errorf("after all released: free %d, order %v, waiting %v", q.free, q.order, q.waiting)
	}
}

// The back-off table stays bounded whatever addresses fail.
func TestBackoffTableBounded(t *testing.T) {
	g := newGuard(1)
	for i := range backoffShards * backoffClients * 2 {
		g.failed(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	for i := range g.shards {
		if n := len(g.shards[i].m); n > backoffClients {
			t.Errorf("shard %d holds %d addresses, want at most %d", i, n, backoffClients)
		}
	}
}

// After a reload that changed a password, a client still sending the old
// one is refused without a bcrypt run and is not backed off: it is not
// guessing. A password that was never right still counts.
func TestStalePasswordNotCounted(t *testing.T) {
	build := func(lines ...string) *Users {
		t.Helper()
		specs, err := ParseUsers(strings.NewReader(strings.Join(lines, "\n") + "\n"))
		if err != nil {
			t.Fatal(err)
		}
		u, err := Build(specs, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	old := build(bcryptLine(t, "alice", "old-pw"), "bob:{PLAIN}old-b", "carol:{PLAIN}same")
	_, g, compares, _ := guardedUsers(t)
	a := netip.MustParseAddr("192.0.2.50")
	if _, err := old.Check(g, a, []byte("alice"), []byte("old-pw")); err != nil {
		t.Fatal(err)
	}
	cur := build(bcryptLine(t, "alice", "new-pw"), "bob:{PLAIN}new-b", "carol:{PLAIN}same")
	cur.Follows(old)
	compares.Store(0)
	for range 3 * backoffBurst {
		for _, c := range [][2]string{{"alice", "old-pw"}, {"bob", "old-b"}} {
			if _, err := cur.Check(g, a, []byte(c[0]), []byte(c[1])); !errors.Is(err, errStale) {
				t.Fatalf("%s's old password after the reload: %v, want refused as stale", c[0], err)
			}
		}
	}
	if n := compares.Load(); n != 0 {
		t.Errorf("%d bcrypt runs for a stale password, want 0", n)
	}
	for _, c := range [][2]string{{"alice", "new-pw"}, {"bob", "new-b"}, {"carol", "same"}} {
		if _, err := cur.Check(g, a, []byte(c[0]), []byte(c[1])); err != nil {
			t.Errorf("%s's current password: %v", c[0], err)
		}
	}
	for i := range backoffBurst {
		if _, err := cur.Check(g, a, []byte("alice"), []byte(fmt.Sprint("guess", i))); errors.Is(err, errStale) || !errors.Is(err, errBadCredentials) {
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	if _, err := cur.Check(g, a, []byte("alice"), []byte("new-pw")); !errors.Is(err, ErrBackoff) {
		t.Errorf("after %d guesses: %v, want back-off", backoffBurst, err)
	}
}

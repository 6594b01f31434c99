package pool

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"
)

func TestDownSourceLeavesRotation(t *testing.T) {
	for _, st := range []Strategy{RoundRobin, Random, LeastRecent} {
		p := loopbackPool(t, st)
		down := p.Sources()[1]
		var seenDown error
		d := NewDialer(p, DialerOptions{DownFor: 200 * time.Millisecond, OnDown: func(_ *Source, err error) { seenDown = err }})
		d.MarkDown(down, syscall.EADDRNOTAVAIL)
		if !errors.Is(seenDown, syscall.EADDRNOTAVAIL) || !down.Down() {
			t.Fatalf("%s: MarkDown did not take the source out", st)
		}
		for i := 0; i < 100; i++ {
			if s, _ := p.Pick(IPv4); s == down {
				t.Fatalf("%s: picked a source that is down", st)
			}
		}
		deadline := time.Now().Add(5 * time.Second)
		for down.Down() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if down.Down() {
			t.Fatalf("%s: source still down after its DownFor", st)
		}
	}
}

// Only the sessions on a down source move; with every source down, rotor
// still picks one rather than refusing.
func TestDownSourceMovesOnlyItsSessions(t *testing.T) {
	p := loopbackPool(t, RoundRobin)
	now := time.Now()
	before := map[string]*Source{}
	for i := 0; i < 400; i++ {
		key := fmt.Sprintf("k%d", i)
		before[key], _ = p.PickSession(IPv4, Session{Key: key}, now)
	}
	down := p.Sources()[2]
	down.down.Store(true)
	defer down.down.Store(false)
	for key, s := range before {
		after, _ := p.PickSession(IPv4, Session{Key: key}, now)
		if s == down && after == down {
			t.Fatalf("session %s stayed on the down source", key)
		}
		if s != down && after != s {
			t.Fatalf("session %s moved from %s although it was up", key, s.Addr)
		}
	}
	for _, s := range p.Sources() {
		s.down.Store(true)
	}
	defer func() {
		for _, s := range p.Sources() {
			s.down.Store(false)
		}
	}()
	if s, err := p.Pick(IPv4); err != nil || s == nil {
		t.Fatalf("all down: %v, %v; want a source anyway", s, err)
	}
}

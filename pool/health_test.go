package pool

import (
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

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

// Only bind's EADDRNOTAVAIL (the address left the host) takes a source
// out; connect's (no ephemeral port left for one destination) does not.
func TestAddressGone(t *testing.T) {
	bind := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("bind", syscall.EADDRNOTAVAIL)}
	conn := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.EADDRNOTAVAIL)}
	if !AddressGone(fmt.Errorf("dial x: %w", bind)) || !IsLocal(bind) {
		t.Error("bind EADDRNOTAVAIL: want gone and local")
	}
	if AddressGone(fmt.Errorf("dial x: %w", conn)) || !IsLocal(conn) {
		t.Error("connect EADDRNOTAVAIL: want local but not gone")
	}
	if AddressGone(syscall.ECONNREFUSED) || IsLocal(syscall.ECONNREFUSED) {
		t.Error("refused: neither")
	}
}

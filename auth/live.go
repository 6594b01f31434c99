package auth

import (
	"net/netip"
	"sync/atomic"

	"github.com/rotor-proxy/rotor/pool"
)

// State is one consistent configuration: the pool and the users whose
// pools are parts of it. It is never changed once published.
type State struct {
	Pool *pool.Pool
	// Users is nil when no credentials are configured: everyone may use
	// the whole pool (rotor then listens on loopback only, unless told).
	Users *Users
}

// Live holds the current State and the client allowlist (fixed at
// start-up). Load is one atomic load; Store replaces everything at once.
type Live struct {
	state   atomic.Pointer[State]
	clients []netip.Prefix
	guard   *Guard // outlives every State: back-off survives a reload
}

// NewLive publishes s. clients are networks whose clients need no
// credentials.
func NewLive(s *State, clients []netip.Prefix) *Live {
	l := &Live{clients: clients, guard: NewGuard()}
	l.state.Store(s)
	return l
}

// Load returns the current state.
func (l *Live) Load() *State { return l.state.Load() }

// Store replaces the state; requests that loaded the old one finish with
// it.
func (l *Live) Store(s *State) { l.state.Store(s) }

// Check verifies credentials from client against the users of st (which
// must have some), under the back-off and bcrypt fairness of this run.
func (l *Live) Check(st *State, client netip.Addr, name, pass []byte) (*User, error) {
	return st.Users.Check(l.guard, client, name, pass)
}

// Trusted reports whether a client at addr needs no credentials
// (--allow-clients).
func (l *Live) Trusted(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range l.clients {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// HasAllowlist reports whether --allow-clients was given.
func (l *Live) HasAllowlist() bool { return len(l.clients) > 0 }

// PoolFor is the pool a request of usr (nil: no user) may leave from:
// the user's own, or the whole pool of this state. nil means the caller's
// default (pool.Session.Pool nil: the dialer's); s may be nil.
func (s *State) PoolFor(usr *User) *pool.Pool {
	switch {
	case usr != nil && usr.Pool != nil:
		return usr.Pool
	case s != nil:
		return s.Pool
	}
	return nil
}

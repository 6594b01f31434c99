// Package testkit builds what the tests of several packages need and the
// binaries never do: an access list that never changes, a user with no
// limits, a pool of single addresses. (Tests of one package keep their
// helpers in their own _test.go files.)
package testkit

import (
	"net/netip"

	"github.com/rotor-proxy/rotor/auth"
	"github.com/rotor-proxy/rotor/pool"
)

// Access is an auth.Live that never changes: users (nil for none) over
// the pool of whoever dials, without an allowlist.
func Access(users *auth.Users) *auth.Live { return auth.NewLive(&auth.State{Users: users}, nil) }

// OneUser is a Users of one user with a plain password and no limits.
func OneUser(name, pass string) *auth.Users {
	u, err := auth.Build([]auth.UserSpec{auth.PlainUser(name, pass)}, nil, nil)
	if err != nil {
		panic(err) // a test's own constant name and password
	}
	return u
}

// Pool is a pool of single addresses, each checked as rotor checks them.
func Pool(addrs []netip.Addr, s pool.Strategy) (*pool.Pool, error) {
	entries := make([]netip.Prefix, len(addrs))
	for i, a := range addrs {
		entries[i] = pool.Single(a)
	}
	return pool.NewEntries(entries, nil, s)
}

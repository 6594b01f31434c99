package auth

import (
	"errors"
	"testing"
	"time"
)

func TestSplitSession(t *testing.T) {
	for _, tc := range []struct {
		in   string
		user string
		key  string
		ttl  time.Duration
		bad  bool
	}{
		{in: "alice", user: "alice"},
		{in: "alice-session-abc123", user: "alice", key: "abc123"},
		{in: "alice-session-a.b_c-ttl-10m", user: "alice", key: "a.b_c", ttl: 10 * time.Minute},
		{in: "my-user-session-k1", user: "my-user", key: "k1"},
		{in: "alice-session-", bad: true},
		{in: "alice-session-k1-ttl-soon", bad: true},
		{in: "alice-session-k1-ttl-0s", bad: true},
		{in: "alice-session-k1-ttl-10m-ttl-5m", bad: true},
		{in: "alice-session-k1-country-us", bad: true},
		{in: "alice-session-k1-ttl", bad: true},
		{in: "alice-session-k%1", bad: true},
	} {
		user, s, err := SplitSession(tc.in)
		if tc.bad {
			if !errors.Is(err, ErrBadSession) {
				t.Errorf("SplitSession(%q) = %q %+v %v, want ErrBadSession", tc.in, user, s, err)
			}
			continue
		}
		if err != nil || user != tc.user || s.Key != tc.key || s.TTL != tc.ttl {
			t.Errorf("SplitSession(%q) = %q %+v %v, want %q %q %s", tc.in, user, s, err, tc.user, tc.key, tc.ttl)
		}
	}
}

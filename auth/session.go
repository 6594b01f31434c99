package auth

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rotor-proxy/rotor/pool"
)

// ErrBadSession marks a user name whose session parameters do not parse.
var ErrBadSession = errors.New("bad session parameter")

// SplitSession splits a user name as a client sends it into the configured
// user and its session
// parameters, the convention of commercial rotating proxies:
//
//	USER                               no session: every request rotates
//	USER-session-KEY                   every request of KEY uses one address
//	USER-session-KEY-ttl-DURATION      ... and moves after DURATION (e.g. 10m)
//
// KEY is 1 to 64 letters, digits, '_' or '.'. Anything else after USER is
// an error naming the parameter, which callers answer as an auth failure.
func SplitSession(name string) (user string, s pool.Session, err error) {
	i := strings.Index(name, "-session-")
	if i < 0 {
		return name, pool.Session{}, nil
	}
	user, rest := name[:i], name[i+len("-session-"):]
	key, rest, _ := strings.Cut(rest, "-")
	if !validKey(key) {
		return "", pool.Session{}, fmt.Errorf("%w: session key %q: want 1-64 letters, digits, '_' or '.'", ErrBadSession, key)
	}
	s.Key = key
	for rest != "" {
		var param, value string
		param, rest, _ = strings.Cut(rest, "-")
		value, rest, _ = strings.Cut(rest, "-")
		switch param {
		case "ttl":
			if s.TTL != 0 {
				return "", pool.Session{}, fmt.Errorf("%w: ttl given twice", ErrBadSession)
			}
			d, err := time.ParseDuration(value)
			if err != nil || d < time.Second || d > 7*24*time.Hour {
				return "", pool.Session{}, fmt.Errorf("%w: ttl %q: want a duration from 1s to 168h", ErrBadSession, value)
			}
			s.TTL = d
		default:
			return "", pool.Session{}, fmt.Errorf("%w: unknown parameter %q", ErrBadSession, param)
		}
	}
	return user, s, nil
}

// ParseSessionKey validates a key sent in the X-Rotor-Session header.
func ParseSessionKey(key string) (pool.Session, error) {
	if !validKey(key) {
		return pool.Session{}, fmt.Errorf("%w: session key %q: want 1-64 letters, digits, '_' or '.'", ErrBadSession, key)
	}
	return pool.Session{Key: key}, nil
}

func validKey(k string) bool {
	if k == "" || len(k) > 64 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

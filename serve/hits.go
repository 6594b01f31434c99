// Package serve holds what both listeners need to serve connections, apart
// from moving their bytes (package tunnel): the accept loop that backs off
// when descriptors run out, the Limiter that caps client connections
// across listeners, the Tracker of live connections a server drains on
// shutdown, and the Hits counters of every timeout and limit enforced.
package serve

import (
	"encoding/json"
	"sync/atomic"

	"github.com/rs/zerolog"
)

// Hit is one timeout or limit rotor enforces, named as the flag or setting
// that sets it. The zero Hit is none: counting it does nothing, so a
// function may return it for "no timeout or limit was hit".
type Hit uint8

const (
	None             Hit = iota
	HeaderTimeout        // HTTP request head not read in time (408)
	HandshakeTimeout     // SOCKS5 handshake not finished in time
	DialTimeout          // connect to a target (504 / 0x04)
	DNSTimeout           // resolving a target name
	ResponseTimeout      // origin's response head (504)
	IdleTimeout          // tunnel or body with no bytes either way
	KeepAliveTimeout     // idle keep-alive HTTP client closed
	MaxHeaderBytes       // request head too large (431)
	MaxConns             // client refused at the connection cap
	UserMaxConns         // request over its user's max-conns (429 / 0x01)
	UserRate             // request over its user's rate
	PerIPRate            // no source address had a token in time
	AuthBackoff          // login refused unchecked: its address failed too often
	UDPIdleTimeout       // UDP association with no datagram either way
	numHits
)

// hitInfo names each Hit as its flag, and says whether it is a timeout or
// a limit (the log field and the metric it is counted under).
var hitInfo = [numHits]struct{ name, kind string }{
	None:             {"", ""},
	HeaderTimeout:    {"header-timeout", "timeout"},
	HandshakeTimeout: {"handshake-timeout", "timeout"},
	DialTimeout:      {"dial-timeout", "timeout"},
	DNSTimeout:       {"dns-timeout", "timeout"},
	ResponseTimeout:  {"response-timeout", "timeout"},
	IdleTimeout:      {"idle-timeout", "timeout"},
	KeepAliveTimeout: {"keepalive-timeout", "timeout"},
	MaxHeaderBytes:   {"max-header-bytes", "limit"},
	MaxConns:         {"max-conns", "limit"},
	UserMaxConns:     {"user-max-conns", "limit"},
	UserRate:         {"user-rate", "limit"},
	PerIPRate:        {"per-ip-rate", "limit"},
	AuthBackoff:      {"auth-backoff", "limit"},
	UDPIdleTimeout:   {"udp-idle-timeout", "timeout"},
}

// String is the Hit's name, as in the log field and the metric label.
func (h Hit) String() string { return hitInfo[h].name }

// IsTimeout reports whether h is a timeout (logged as "timeout"), not a
// limit (logged as "limit").
func (h Hit) IsTimeout() bool { return hitInfo[h].kind == "timeout" }

// Field adds h to a log line as "timeout" or "limit"; None adds nothing.
func (h Hit) Field(e *zerolog.Event) *zerolog.Event {
	switch {
	case h == None:
		return e
	case h.IsTimeout():
		return e.Str("timeout", h.String())
	}
	return e.Str("limit", h.String())
}

// Hits counts every timeout and limit a listener enforces. Each hit is
// also logged once with the same name.
type Hits struct {
	n [numHits]atomic.Int64
}

// Add counts one hit of h; None and a nil Hits count nothing.
func (hs *Hits) Add(h Hit) {
	if hs != nil && h != None {
		hs.n[h].Add(1)
	}
}

// Load is how often h was hit.
func (hs *Hits) Load(h Hit) int64 {
	if hs == nil {
		return 0
	}
	return hs.n[h].Load()
}

// Each calls f for every Hit with its count; a nil Hits reports zeros.
func (hs *Hits) Each(f func(h Hit, n int64)) {
	for h := None + 1; h < numHits; h++ {
		f(h, hs.Load(h))
	}
}

// Sum is the counts of several Hits added up.
func Sum(hs ...*Hits) *Hits {
	var out Hits
	for _, h := range hs {
		h.Each(func(x Hit, n int64) { out.n[x].Add(n) })
	}
	return &out
}

// MarshalJSON reports the counts by name.
func (hs *Hits) MarshalJSON() ([]byte, error) {
	m := map[string]int64{}
	hs.Each(func(h Hit, n int64) { m[h.String()] = n })
	return json.Marshal(m)
}

package tunnel

import (
	"encoding/json"
	"sync/atomic"
)

// Hits counts every timeout and limit a listener enforces, by name. Each
// hit is also logged once with the same name (field
// "timeout" or "limit"). The names are those of the flags that set them.
type Hits struct {
	HeaderTimeout    atomic.Int64 // HTTP request head not read in time (408)
	HandshakeTimeout atomic.Int64 // SOCKS5 handshake not finished in time
	DialTimeout      atomic.Int64 // connect to a target (504 / 0x04)
	DNSTimeout       atomic.Int64 // resolving a target name
	ResponseTimeout  atomic.Int64 // origin's response head (504)
	IdleTimeout      atomic.Int64 // tunnel with no bytes either way
	KeepAliveTimeout atomic.Int64 // idle keep-alive HTTP client closed
	MaxHeaderBytes   atomic.Int64 // request head too large (431)
	MaxConns         atomic.Int64 // client refused at the connection cap
	UserMaxConns     atomic.Int64 // request over its user's max-conns (429 / 0x01)
	UserRate         atomic.Int64 // request over its user's rate
	PerIPRate        atomic.Int64 // no source address had a token in time
	AuthBackoff      atomic.Int64 // login refused unchecked: its client address failed too often
}

// Add counts a hit by its flag name; unknown names are ignored.
func (h *Hits) Add(name string) {
	if h == nil {
		return
	}
	if c := h.counter(name); c != nil {
		c.Add(1)
	}
}

func (h *Hits) counter(name string) *atomic.Int64 {
	switch name {
	case "header-timeout":
		return &h.HeaderTimeout
	case "handshake-timeout":
		return &h.HandshakeTimeout
	case "dial-timeout":
		return &h.DialTimeout
	case "dns-timeout":
		return &h.DNSTimeout
	case "response-timeout":
		return &h.ResponseTimeout
	case "idle-timeout":
		return &h.IdleTimeout
	case "keepalive-timeout":
		return &h.KeepAliveTimeout
	case "max-header-bytes":
		return &h.MaxHeaderBytes
	case "max-conns":
		return &h.MaxConns
	case "user-max-conns":
		return &h.UserMaxConns
	case "user-rate":
		return &h.UserRate
	case "per-ip-rate":
		return &h.PerIPRate
	case "auth-backoff":
		return &h.AuthBackoff
	}
	return nil
}

// hitNames lists every name Hits counts, and whether it is a timeout or
// a limit.
var hitNames = [...]struct{ name, kind string }{
	{"header-timeout", "timeout"}, {"handshake-timeout", "timeout"}, {"dial-timeout", "timeout"},
	{"dns-timeout", "timeout"}, {"response-timeout", "timeout"}, {"idle-timeout", "timeout"},
	{"keepalive-timeout", "timeout"}, {"max-header-bytes", "limit"}, {"max-conns", "limit"},
	{"user-max-conns", "limit"}, {"user-rate", "limit"}, {"per-ip-rate", "limit"}, {"auth-backoff", "limit"},
}

// Each calls f for every name with its kind ("timeout" or "limit") and
// count; a nil Hits reports zeros.
func (h *Hits) Each(f func(name, kind string, n int64)) {
	for _, hn := range hitNames {
		var n int64
		if h != nil {
			n = h.counter(hn.name).Load()
		}
		f(hn.name, hn.kind, n)
	}
}

// Sum is the counts of several Hits added up.
func Sum(hs ...*Hits) *Hits {
	var out Hits
	for _, h := range hs {
		h.Each(func(name, _ string, n int64) { out.counter(name).Add(n) })
	}
	return &out
}

// MarshalJSON reports the counts by name.
func (h *Hits) MarshalJSON() ([]byte, error) {
	m := map[string]int64{}
	h.Each(func(name, _ string, n int64) { m[name] = n })
	return json.Marshal(m)
}

package auth

import (
	"crypto/sha256"
	"sync"
	"sync/atomic"
)

// verifiedMax bounds the cache: beyond it, the cache starts over empty
// (one bcrypt per live credential to refill), so memory stays bounded
// whatever clients send.
const verifiedMax = 10000

// verified caches credentials that passed bcrypt, keyed by SHA-256 of the
// name and password together. Reads are lock-free (sync.Map is built for
// keys written once and read many times); the map is dropped with its
// Users at reload, so a changed password is never served from it.
type verified struct {
	m   atomic.Pointer[sync.Map]
	n   atomic.Int64
	max int64
}

func newVerified(max int64) *verified {
	v := &verified{max: max}
	v.m.Store(new(sync.Map))
	return v
}

func credentialKey(name, pass []byte) [sha256.Size]byte {
	h := sha256.New()
	// Length-prefixed, so that no two (name, password) pairs share a key.
	h.Write([]byte{byte(len(name) >> 8), byte(len(name))})
	h.Write(name)
	h.Write(pass)
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

func (v *verified) has(k [sha256.Size]byte, usr *User) bool {
	got, ok := v.m.Load().Load(k)
	return ok && got.(*User) == usr
}

func (v *verified) add(k [sha256.Size]byte, usr *User) {
	if v.n.Add(1) > v.max {
		v.m.Store(new(sync.Map))
		v.n.Store(1)
	}
	v.m.Load().Store(k, usr)
}

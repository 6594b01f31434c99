// Package epolltoken keeps a 64-bit token in an epoll event's data, which
// x/sys/unix splits into Fd and Pad. rotor's epoll sets carry tokens, not
// descriptors: a token is never reused, so an event for a socket closed
// meanwhile cannot be taken for one that got its number.
package epolltoken

import "golang.org/x/sys/unix"

// Set stores t in ev's data.
func Set(ev *unix.EpollEvent, t uint64) {
	ev.Fd = int32(uint32(t))
	ev.Pad = int32(uint32(t >> 32))
}

// Get returns the token in ev's data.
func Get(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

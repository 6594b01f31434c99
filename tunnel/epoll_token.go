package tunnel

import "golang.org/x/sys/unix"

// An epoll event's data is 64 bits; x/sys/unix splits it into Fd and Pad.
func setToken(ev *unix.EpollEvent, t uint64) {
	ev.Fd = int32(uint32(t))
	ev.Pad = int32(uint32(t >> 32))
}

func getToken(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

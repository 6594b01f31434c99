package udploop

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchSize is how many datagrams one recvmmsg takes from a socket. A call
// that returns fewer found the socket empty: the loop then knows, without
// another system call, that the next datagram to it will wake Go's poller.
const batchSize = 4

// batch is a loop's recvmmsg vector: a full-sized buffer per datagram, so
// none is ever truncated.
type batch struct {
	msgs  [batchSize]unix.Mmsghdr
	iovs  [batchSize]unix.Iovec
	names [batchSize]unix.RawSockaddrInet6
	bufs  [batchSize][]byte
}

func newBatch() *batch {
	b := &batch{}
	for i := range b.msgs {
		b.bufs[i] = make([]byte, maxHead+maxRead)
		b.msgs[i].Hdr.Iov = &b.iovs[i]
		b.msgs[i].Hdr.SetIovlen(1)
		b.msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
	}
	return b
}

// recv reads up to batchSize datagrams from fd without waiting, each into
// its buffer after head bytes of room. It returns how many it read, and
// whether fd is now empty (an error, EAGAIN aside, may leave data behind).
func (b *batch) recv(fd, head int) (n int, empty bool) {
	for i := range b.msgs {
		b.iovs[i].Base = &b.bufs[i][head]
		b.iovs[i].SetLen(maxRead)
		b.msgs[i].Hdr.Namelen = uint32(unsafe.Sizeof(b.names[i]))
		b.msgs[i].Len = 0
	}
	// Non-blocking, recvmmsg returns at once: RawSyscall spares the
	// scheduler's entry and exit.
	r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msgs[0])), batchSize,
		unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e == unix.EAGAIN
	}
	return int(r), int(r) < batchSize
}

// datagram returns the i-th datagram read, room included, and its sender.
func (b *batch) datagram(i, head int) ([]byte, netip.AddrPort) {
	return b.bufs[i][:head+int(b.msgs[i].Len)], addrPort(&b.names[i])
}

// addrPort reads an AF_INET or AF_INET6 socket address (IPv4-mapped
// addresses unmapped).
func addrPort(rsa *unix.RawSockaddrInet6) netip.AddrPort {
	switch rsa.Family {
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(rsa.Addr).Unmap(), getPort(&rsa.Port))
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), getPort(&sa4.Port))
	}
	return netip.AddrPort{}
}

package udploop

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/rotor-proxy/rotor/internal/epolltoken"
)

// maxHead is the most headroom a socket may ask for.
const maxHead = 64

// Socket is a UDP socket owned by a Loop.
type Socket struct {
	l     *Loop
	v6    bool
	local netip.AddrPort
	once  sync.Once

	// Loop goroutine only, once Serve has run (before it, the adopting
	// goroutine's; Post orders the two).
	fd    int // -1 once closed
	token uint64
	head  int
	h     Handler
}

// LocalAddr is the address the socket is bound to.
func (s *Socket) LocalAddr() netip.AddrPort { return s.local }

// Loop is the loop the socket belongs to.
func (s *Socket) Loop() *Loop { return s.l }

// Serve starts reading: h is called on the loop's goroutine for each
// datagram, with head bytes (at most 64) of room in front of it. It fails
// if the loop has stopped.
func (s *Socket) Serve(head int, h Handler) error {
	if head < 0 || head > maxHead {
		panic("udploop: headroom out of range")
	}
	var err error
	done := make(chan struct{})
	if !s.l.Post(func() { err = s.register(head, h); close(done) }) {
		return ErrClosed
	}
	<-done
	return err
}

// register adds the socket to the loop's epoll set (loop).
func (s *Socket) register(head int, h Handler) error {
	if s.fd < 0 {
		return net.ErrClosed
	}
	s.l.next++
	s.token, s.head, s.h = s.l.next, head, h
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	epolltoken.Set(&ev, s.token)
	if err := unix.EpollCtl(s.l.epfd, unix.EPOLL_CTL_ADD, s.fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	s.l.socks[s.token] = s
	return nil
}

// Close closes the socket and returns once its handler will not run
// again. It must not be called from the loop's goroutine (a handler or a
// posted task); calls after the first do nothing.
func (s *Socket) Close() {
	s.once.Do(func() {
		done := make(chan struct{})
		if s.l.Post(func() { s.closeFD(); close(done) }) {
			<-done
			return
		}
		// The loop has stopped, or is stopping: it closes the sockets it
		// was reading; one it never read is closed here.
		<-s.l.done
		s.closeFD()
	})
}

// closeFD closes the descriptor, which also takes it out of the epoll set.
func (s *Socket) closeFD() {
	if s.fd < 0 {
		return
	}
	unix.Close(s.fd)
	s.fd = -1
	if s.l.socks != nil {
		delete(s.l.socks, s.token)
	}
}

// WriteTo sends b to to; on the loop's goroutine only. A socket whose send
// buffer is full returns EAGAIN at once (UDP may drop; the loop must not
// wait on one socket).
func (s *Socket) WriteTo(b []byte, to netip.AddrPort) error {
	if s.fd < 0 {
		return net.ErrClosed
	}
	var rsa unix.RawSockaddrInet6
	n := s.sockaddr(&rsa, to)
	if n == 0 {
		return errFamily
	}
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	// A non-blocking sendto returns at once: RawSyscall spares the
	// scheduler's entry and exit.
	_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(s.fd), uintptr(p), uintptr(len(b)), 0,
		uintptr(unsafe.Pointer(&rsa)), uintptr(n))
	if e != 0 {
		return os.NewSyscallError("sendto", e)
	}
	return nil
}

var errFamily = os.NewSyscallError("sendto", unix.EAFNOSUPPORT)

// sockaddr fills rsa with to in the socket's family and returns its
// length, or 0 if to cannot be reached from it (IPv6 to an IPv4 socket).
func (s *Socket) sockaddr(rsa *unix.RawSockaddrInet6, to netip.AddrPort) uintptr {
	port := to.Port()
	if s.v6 {
		rsa.Family = unix.AF_INET6
		putPort(&rsa.Port, port)
		rsa.Addr = to.Addr().As16()
		return unix.SizeofSockaddrInet6
	}
	ip := to.Addr().Unmap()
	if !ip.Is4() {
		return 0
	}
	sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
	sa4.Family = unix.AF_INET
	putPort(&sa4.Port, port)
	sa4.Addr = ip.As4()
	return unix.SizeofSockaddrInet4
}

// A sockaddr's port is in network byte order whatever the machine's.
func putPort(p *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(port>>8), byte(port)
}

func getPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}

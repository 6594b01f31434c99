// Package udploop reads and writes the datagrams of many UDP sockets on a
// few goroutines: each Loop watches its sockets in an epoll set of its own,
// level-triggered, and calls a socket's handler for every datagram.
//
// Why not Go's poller: a read on an idle *net.UDPConn costs two recvfrom
// calls per datagram (the first one returns EAGAIN and parks the goroutine)
// plus a goroutine wake-up, and an association held two such goroutines.
// Here one recvmmsg takes up to a batch of datagrams from a ready socket,
// and a busy loop finds many sockets ready in one epoll_wait. No
// well-kept library offers this for UDP, so it is rotor's own (the
// pattern of tunnel.Parker, for datagrams).
//
// A Loop's epoll descriptor is itself watched by Go's poller, so an idle
// loop parks its goroutine rather than a thread. Every socket descriptor
// is owned by its Loop: reads, writes, registration and close all happen
// on the loop's goroutine (Post runs code there), so a closed descriptor's
// number, reused by another socket, is never read or written by mistake.
package udploop

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/rotor-proxy/rotor/internal/epolltoken"
)

// ErrClosed is returned for a Loop that has stopped.
var ErrClosed = errors.New("udploop: loop closed")

// Handler is called on the loop's goroutine for each datagram a socket
// reads: buf[head:] is the datagram, buf[:head] room the handler may fill
// (a header to send in front of it). buf is the loop's and is reused when
// the handler returns. A handler must not block: every socket of the loop
// waits on it.
type Handler func(buf []byte, head int, from netip.AddrPort)

// maxRead is the loop's read buffer past a socket's headroom: one byte
// more than the largest datagram, so an oversized one shows as such.
const maxRead = 64<<10 + 1

// budget is how many epoll_wait rounds one turn of the loop runs before
// it returns to Go's scheduler.
const budget = 64

// Loop is one goroutine and one epoll set.
type Loop struct {
	epfd   int
	wakefd int      // eventfd: Post wakes the loop
	ep     *os.File // epfd, watched by Go's poller
	rc     syscall.RawConn
	done   chan struct{} // closed when the loop's goroutine ends

	mu     sync.Mutex
	tasks  []func()
	closed bool

	// Loop goroutine only.
	stopping bool // closed was seen: end after this round
	socks    map[uint64]*Socket
	next     uint64
	events   []unix.EpollEvent
	batch    *batch
	err      error
}

// token 0 in an epoll event is the wake-up eventfd.
const wakeToken = 0

func newLoop() (*Loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	epolltoken.Set(&ev, wakeToken)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	// Non-blocking, os.NewFile hands the epoll descriptor to Go's poller:
	// it becomes readable when any socket in the set is.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	ep := os.NewFile(uintptr(epfd), "udploop-epoll")
	rc, err := ep.SyscallConn()
	if err != nil {
		ep.Close()
		unix.Close(wakefd)
		return nil, err
	}
	l := &Loop{epfd: epfd, wakefd: wakefd, ep: ep, rc: rc, socks: map[uint64]*Socket{},
		next: wakeToken, events: make([]unix.EpollEvent, 128), done: make(chan struct{})}
	go l.run()
	return l, nil
}

// Post runs f on the loop's goroutine, after the datagrams it is handling.
// It reports false, and f never runs, once the loop has stopped.
func (l *Loop) Post(f func()) bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	l.tasks = append(l.tasks, f)
	first := len(l.tasks) == 1
	l.mu.Unlock()
	if first {
		var one = [8]byte{1}
		_, _ = unix.Write(l.wakefd, one[:]) // EAGAIN: the counter is full, the loop will wake anyway
	}
	return true
}

// close stops the loop: queued tasks run, then every socket still open is
// closed. It waits for the goroutine to end.
func (l *Loop) close() {
	l.mu.Lock()
	already := l.closed
	l.closed = true
	l.mu.Unlock()
	if !already {
		var one = [8]byte{1}
		_, _ = unix.Write(l.wakefd, one[:])
	}
	<-l.done
}

func (l *Loop) run() {
	defer close(l.done)
	for !l.stopping && l.err == nil {
		if err := l.rc.Read(l.poll); err != nil {
			l.err = err
		}
	}
	l.runTasks(true)
	for _, s := range l.socks {
		s.closeFD()
	}
	l.socks = nil
	unix.Close(l.wakefd)
	l.ep.Close()
}

// poll handles what is ready, round after round, and returns false (wait
// for the epoll descriptor to be readable) once nothing is: the set is
// level-triggered, so a datagram left unread is found in the next round,
// and an empty round means the next arrival wakes Go's poller.
func (l *Loop) poll(uintptr) bool {
	for range budget {
		n, err := unix.EpollWait(l.epfd, l.events, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			l.err = os.NewSyscallError("epoll_wait", err)
			return true
		}
		if n == 0 {
			return false
		}
		// Every descriptor this round found emptied (and no more ready
		// than fit in events): whatever arrives next wakes Go's poller,
		// so the loop may wait without another epoll_wait to make sure.
		// (Linux wakes an epoll set's own waiters on every event of a
		// descriptor in it, already on its ready list or not; a loop that
		// missed one would stall, which every ping-pong test here shows.)
		emptied := n < len(l.events)
		for i := range n {
			if !l.ready(epolltoken.Get(&l.events[i])) {
				emptied = false
			}
		}
		if l.stopping {
			return true
		}
		if emptied {
			return false
		}
	}
	return true // a turn's worth done: let the scheduler run others
}

// ready handles one ready descriptor: the wake-up, or a socket's next
// datagrams, up to a batch. It reports whether the descriptor is empty.
func (l *Loop) ready(token uint64) bool {
	if token == wakeToken {
		l.wake()
		return true
	}
	s := l.socks[token]
	if s == nil {
		return true // closed by a task earlier in this round
	}
	if l.batch == nil {
		l.batch = newBatch()
	}
	n, empty := l.batch.recv(s.fd, s.head)
	for i := range n {
		buf, from := l.batch.datagram(i, s.head)
		s.h(buf, s.head, from)
	}
	return empty
}

// wake clears the eventfd and runs the posted tasks.
func (l *Loop) wake() {
	var b [8]byte
	_, _ = unix.Read(l.wakefd, b[:])
	if l.runTasks(false) {
		l.stopping = true
	}
}

// runTasks runs the tasks posted so far, first marking the loop closed
// (no more may be posted) if final is set; it reports whether the loop is
// closed.
func (l *Loop) runTasks(final bool) (closed bool) {
	l.mu.Lock()
	if final {
		l.closed = true
	}
	tasks, closed := l.tasks, l.closed
	l.tasks = nil
	l.mu.Unlock()
	for _, f := range tasks {
		f()
	}
	return closed
}

// Adopt takes c's socket for the loop and closes c: c's descriptor leaves
// Go's poller and the loop owns a duplicate of it. The socket is not read
// until Serve.
func (l *Loop) Adopt(c *net.UDPConn) (*Socket, error) {
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(f uintptr) {
		fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, os.NewSyscallError("fcntl", derr)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("getsockname", err)
	}
	_, v6 := sa.(*unix.SockaddrInet6)
	local := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return &Socket{l: l, fd: fd, v6: v6, local: local}, nil
}

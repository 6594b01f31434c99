package tunnel

import (
	"errors"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rotor-proxy/rotor/internal/epolltoken"
)

// Parker holds the idle directions of a server's tunnels without a
// goroutine each: a direction silent for parkAfter registers its socket on
// one epoll instance (EPOLLONESHOT) and its goroutine ends; readability
// (data, FIN or reset) starts a new one where it left off. Go's poller
// needs a goroutine per waiting socket, and two goroutines (their g
// structs and 2-4 KiB stacks) were most of an idle tunnel's memory.
//
// Registration and removal run inside RawConn.Control, which holds a
// reference on the descriptor, so a socket closed meanwhile cannot be
// confused with a new one that reuses its number. A closed socket leaves
// the epoll set by itself; the relay unparks a direction before closing
// its sockets, so it is never left waiting.
//
// The zero Parker is ready to use; Close stops it once its server's
// tunnels have ended.
type Parker struct {
	mu      sync.Mutex
	epfd    int
	wakefd  int // eventfd: Close wakes the loop
	parked  map[uint64]*direction
	next    uint64
	started bool
	closed  bool
	done    chan struct{}
}

// parkAfter is how long a tunnel must be silent before its directions park.
const parkAfter = 250 * time.Millisecond

// sweepEvery is how often parked tunnels are checked for the idle timeout.
const sweepEvery = time.Second

var errParkerClosed = errors.New("parker closed")

func (p *Parker) start() error {
	if p.started {
		return nil
	}
	if p.closed {
		return errParkerClosed
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	epolltoken.Set(&ev, 0) // token 0 is the wake-up
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return err
	}
	p.epfd, p.wakefd, p.parked, p.done, p.started = epfd, wakefd, map[uint64]*direction{}, make(chan struct{}), true
	go p.loop()
	return nil
}

// park registers d's source socket and reports whether d is now parked;
// its goroutine must then return without touching d.
func (p *Parker) park(d *direction) bool {
	sc, ok := d.src.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.start() != nil {
		return false
	}
	p.next++
	token := p.next
	var cerr error
	err = rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
		epolltoken.Set(&ev, token)
		cerr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err != nil || cerr != nil {
		return false
	}
	d.token = token
	p.parked[token] = d
	return true
}

// take removes a parked direction and its registration. It reports false
// if d was not parked (or was already taken by someone else).
func (p *Parker) take(d *direction) bool {
	p.mu.Lock()
	if p.parked[d.token] != d {
		p.mu.Unlock()
		return false
	}
	delete(p.parked, d.token)
	p.mu.Unlock()
	p.unregister(d)
	return true
}

func (p *Parker) unregister(d *direction) {
	if rc, err := d.src.(syscall.Conn).SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
		})
	}
}

// loop resumes directions whose socket became readable and sweeps parked
// tunnels for the idle timeout.
func (p *Parker) loop() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	lastSweep := time.Now()
	for {
		n, err := unix.EpollWait(p.epfd, events, int(sweepEvery/time.Millisecond))
		if err != nil && err != unix.EINTR {
			return
		}
		for i := 0; i < n; i++ {
			token := epolltoken.Get(&events[i])
			if token == 0 {
				p.mu.Lock()
				closed := p.closed
				p.mu.Unlock()
				if closed {
					unix.Close(p.epfd)
					unix.Close(p.wakefd)
					return
				}
				continue
			}
			p.mu.Lock()
			d := p.parked[token]
			delete(p.parked, token)
			p.mu.Unlock()
			if d != nil {
				p.unregister(d)
				d.resume()
			}
		}
		if time.Since(lastSweep) >= sweepEvery {
			lastSweep = time.Now()
			p.sweep()
		}
	}
}

// sweep closes parked tunnels that have been idle for their timeout.
func (p *Parker) sweep() {
	var expired []*relay
	p.mu.Lock()
	for _, d := range p.parked {
		if r := d.r; r.opts.Idle > 0 && r.idleFor() >= r.opts.Idle {
			expired = append(expired, r)
		}
	}
	p.mu.Unlock()
	for _, r := range expired {
		r.close(ErrIdle)
	}
}

// Close stops the parker. Call it after every tunnel using it has ended.
func (p *Parker) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	started := p.started
	p.mu.Unlock()
	if !started {
		return
	}
	var one [8]byte
	one[0] = 1
	_, _ = unix.Write(p.wakefd, one[:])
	<-p.done
}

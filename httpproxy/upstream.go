package httpproxy

import (
	"bufio"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// upConn is a connection to an origin, from one source address.
type upConn struct {
	c      net.Conn     // what requests are written to (TLS for https)
	raw    *net.TCPConn // the socket, for the liveness check
	br     *bufio.Reader
	bw     *bufio.Writer
	key    string // scheme://host:port
	idleAt time.Time
}

func (u *upConn) close() { u.c.Close() }

// maxIdlePerHost bounds the idle connections kept per source and origin.
const maxIdlePerHost = 64

// upstreamPool keeps one source address's idle upstream connections, by
// origin. A mutex held for a map lookup and a slice pop per request;
// it is per source, so requests from different sources never contend.
type upstreamPool struct {
	mu      sync.Mutex
	idle    map[string][]*upConn
	timeout time.Duration
}

func newUpstreamPool(timeout time.Duration) *upstreamPool {
	return &upstreamPool{idle: map[string][]*upConn{}, timeout: timeout}
}

// take returns the most recently used idle connection to key that the
// origin has not closed, or nil.
func (p *upstreamPool) take(key string) *upConn {
	for {
		p.mu.Lock()
		list := p.idle[key]
		if len(list) == 0 {
			p.mu.Unlock()
			return nil
		}
		u := list[len(list)-1]
		list[len(list)-1] = nil
		p.idle[key] = list[:len(list)-1]
		p.mu.Unlock()
		if time.Since(u.idleAt) < p.timeout && alive(u.raw) {
			return u
		}
		u.close()
	}
}

// put keeps u for reuse, or closes it when the pool is full.
func (p *upstreamPool) put(u *upConn) {
	u.idleAt = time.Now()
	p.mu.Lock()
	if list := p.idle[u.key]; len(list) < maxIdlePerHost {
		p.idle[u.key] = append(list, u)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	u.close()
}

// closeIdle closes connections idle longer than the timeout.
func (p *upstreamPool) closeIdle(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, list := range p.idle {
		kept := list[:0]
		for _, u := range list {
			if now.Sub(u.idleAt) >= p.timeout {
				u.close()
			} else {
				kept = append(kept, u)
			}
		}
		clear(list[len(kept):])
		if len(kept) == 0 {
			delete(p.idle, key)
		} else {
			p.idle[key] = kept
		}
	}
}

func (p *upstreamPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, list := range p.idle {
		for _, u := range list {
			u.close()
		}
		delete(p.idle, key)
	}
}

// alive reports whether an idle connection is still open with nothing
// unread: a peek that would block. An origin that closed it (EOF) or sent
// something unasked is not reused, so a request is not written into a
// dead connection.
func alive(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		ok = err == unix.EAGAIN
		return true
	})
	return err == nil && ok
}

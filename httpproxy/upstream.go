package httpproxy

import (
	"bufio"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
)

// upConn is a connection to an origin, from one source address.
type upConn struct {
	c     net.Conn     // what requests are written to (TLS for https)
	raw   *net.TCPConn // the socket, for the liveness check (nil: none to check)
	local netip.Addr   // the address bound (for a block, the one drawn)
	br    *bufio.Reader
	bw    *bufio.Writer
	buf   headBuf // response heads are read into this
	nread int64   // bytes read from the origin, to tell whether any came
	// proxy is set when the connection is to an HTTP upstream proxy entry,
	// which gets requests in absolute form with rotor's credentials for it.
	proxy *proxyHop

	key        upKey
	idleAt     time.Time
	prev, next *upConn // in its shard's idle list, oldest first
}

func (u *upConn) close() { u.c.Close() }

// countReader counts what the origin sent, under the bufio.Reader.
type countReader struct{ u *upConn }

func (r countReader) Read(p []byte) (int, error) {
	n, err := r.u.c.Read(p)
	r.u.nread += int64(n)
	return n, err
}

// upKey says which requests may share an idle connection: the same
// source address, origin and user. The origin is keyed by the address it
// was asked as, canonical (198.51.100.0007 is 198.51.100.7), or by its
// name in lower case; the scheme by whether TLS wraps it. A client
// without a user name is keyed by its address, so no two anonymous
// clients share a connection either.
type upKey struct {
	user   string
	client netip.Addr // when user is empty
	local  netip.Addr
	tls    bool
	ip     netip.Addr // the origin, when given as an address
	name   string     // the origin, when given as a name
	port   string
	// session is the client's session key through an upstream entry that
	// hands sessions on (?session=pass): the upstream chose the address
	// of a connection by it, which rotor cannot see.
	session string
}

// Idle connection caps, unless Options say otherwise.
const (
	DefaultMaxIdleConns     = 1024
	DefaultMaxIdlePerSource = 256
)

// idlePool keeps idle upstream connections, one shard per source so that
// requests from different sources never contend. Each idle connection
// holds a slot of the connection limiter (the descriptor budget behind
// --max-conns); when a new client finds no slot free, the oldest idle
// connection is closed to make one (see reclaim).
type idlePool struct {
	shards    *pool.Table[idleShard]
	timeout   time.Duration
	max       int64
	perSource int
	limit     *serve.Limiter
	n         atomic.Int64 // idle connections in all shards
}

// idleShard is one source's idle connections: by key, newest last, and
// in one list by age for eviction.
type idleShard struct {
	mu         sync.Mutex
	byKey      map[upKey][]*upConn
	n          int
	head, tail *upConn // oldest, newest
}

func newIdlePool(p *pool.Pool, timeout time.Duration, max, perSource int, limit *serve.Limiter) *idlePool {
	return &idlePool{
		shards:  pool.NewTable(p, func(*pool.Source) *idleShard { return &idleShard{byKey: map[upKey][]*upConn{}} }),
		timeout: timeout, max: int64(max), perSource: perSource, limit: limit,
	}
}

// take returns the most recently used idle connection for key that the
// origin has neither closed nor written to, or nil.
func (p *idlePool) take(src *pool.Source, key upKey) *upConn {
	sh := p.shards.Get(src)
	for {
		sh.mu.Lock()
		list := sh.byKey[key]
		if len(list) == 0 {
			sh.mu.Unlock()
			return nil
		}
		u := list[len(list)-1]
		list[len(list)-1] = nil
		if len(list) == 1 {
			delete(sh.byKey, key)
		} else {
			sh.byKey[key] = list[:len(list)-1]
		}
		sh.unlink(u)
		sh.mu.Unlock()
		p.gone(1)
		if time.Since(u.idleAt) < p.timeout && alive(u.raw) {
			return u
		}
		u.close()
	}
}

// put keeps u for reuse, or closes it: when anything is left unread in
// rotor's buffer or in the socket (bytes the origin sent unasked belong
// to no request), and when no slot is free even after the oldest idle
// connection is closed.
func (p *idlePool) put(src *pool.Source, u *upConn) {
	// The last exchange's deadlines end with it: one that passed while
	// the connection idled would fail alive's peek, and the connection
	// would never be reused.
	_ = u.c.SetDeadline(time.Time{})
	if u.br.Buffered() != 0 || !alive(u.raw) || !p.limit.TryAcquire() && !(p.reclaim() && p.limit.TryAcquire()) {
		u.close()
		return
	}
	u.idleAt = time.Now()
	sh := p.shards.Get(src)
	sh.mu.Lock()
	var evict *upConn
	if sh.n >= p.perSource || p.n.Load() >= p.max {
		evict = sh.head
		if evict != nil {
			sh.remove(evict)
		}
	}
	sh.byKey[u.key] = append(sh.byKey[u.key], u)
	sh.link(u)
	sh.mu.Unlock()
	p.n.Add(1)
	if evict != nil {
		p.gone(1)
		evict.close()
	} else if p.n.Load() > p.max {
		// Another source's put raced this one past the cap: give this
		// one back rather than scan every shard.
		if p.takeBack(sh, u) {
			u.close()
		}
	}
}

// takeBack removes u from sh if it is still idle there.
func (p *idlePool) takeBack(sh *idleShard, u *upConn) bool {
	sh.mu.Lock()
	list := sh.byKey[u.key]
	found := len(list) > 0 && list[len(list)-1] == u
	if found {
		sh.remove(u)
	}
	sh.mu.Unlock()
	if found {
		p.gone(1)
	}
	return found
}

// gone accounts for n connections that left the pool.
func (p *idlePool) gone(n int) {
	p.n.Add(int64(-n))
	for range n {
		p.limit.Release()
	}
}

// reclaim closes the oldest idle connection of all sources, giving its
// slot back; it reports whether there was one.
func (p *idlePool) reclaim() bool {
	var oldest *idleShard
	var at time.Time
	for _, sh := range p.shards.All() {
		if sh == nil {
			continue
		}
		sh.mu.Lock()
		if sh.head != nil && (oldest == nil || sh.head.idleAt.Before(at)) {
			oldest, at = sh, sh.head.idleAt
		}
		sh.mu.Unlock()
	}
	if oldest == nil {
		return false
	}
	oldest.mu.Lock()
	u := oldest.head
	if u != nil {
		oldest.remove(u)
	}
	oldest.mu.Unlock()
	if u == nil {
		return false
	}
	p.gone(1)
	u.close()
	return true
}

// closeIdle closes connections idle longer than the timeout.
func (p *idlePool) closeIdle(now time.Time) {
	for _, sh := range p.shards.All() {
		if sh == nil {
			continue
		}
		var old []*upConn
		sh.mu.Lock()
		for u := sh.head; u != nil && now.Sub(u.idleAt) >= p.timeout; u = sh.head {
			sh.remove(u)
			old = append(old, u)
		}
		sh.mu.Unlock()
		p.closeAll(old)
	}
}

// drop closes every idle connection from src: it left rotation, or the
// host no longer has its address, and a request must not hang on a
// connection whose replies can no longer arrive.
func (p *idlePool) drop(src *pool.Source) {
	sh := p.shards.Get(src)
	sh.mu.Lock()
	var old []*upConn
	for u := sh.head; u != nil; u = sh.head {
		sh.remove(u)
		old = append(old, u)
	}
	sh.mu.Unlock()
	p.closeAll(old)
}

// dropAll closes every idle connection.
func (p *idlePool) dropAll() {
	for _, sh := range p.shards.All() {
		if sh == nil {
			continue
		}
		var old []*upConn
		sh.mu.Lock()
		for u := sh.head; u != nil; u = sh.head {
			sh.remove(u)
			old = append(old, u)
		}
		sh.mu.Unlock()
		p.closeAll(old)
	}
}

func (p *idlePool) closeAll(us []*upConn) {
	p.gone(len(us))
	for _, u := range us {
		u.close()
	}
}

// remove takes u out of the shard's key list and age list; the caller
// holds the lock.
func (sh *idleShard) remove(u *upConn) {
	list := sh.byKey[u.key]
	for i, v := range list {
		if v == u {
			copy(list[i:], list[i+1:])
			list[len(list)-1] = nil
			list = list[:len(list)-1]
			break
		}
	}
	if len(list) == 0 {
		delete(sh.byKey, u.key)
	} else {
		sh.byKey[u.key] = list
	}
	sh.unlink(u)
}

func (sh *idleShard) link(u *upConn) {
	u.prev, u.next = sh.tail, nil
	if sh.tail != nil {
		sh.tail.next = u
	} else {
		sh.head = u
	}
	sh.tail = u
	sh.n++
}

func (sh *idleShard) unlink(u *upConn) {
	if u.prev != nil {
		u.prev.next = u.next
	} else {
		sh.head = u.next
	}
	if u.next != nil {
		u.next.prev = u.prev
	} else {
		sh.tail = u.prev
	}
	u.prev, u.next = nil, nil
	sh.n--
}

// alive reports whether an idle connection is still open with nothing
// unread: a peek that would block. An origin that closed it (EOF) or sent
// something unasked is not reused, so a request is not written into a
// dead connection and no stray response is taken for the next one.
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

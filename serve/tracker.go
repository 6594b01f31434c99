package serve

import (
	"context"
	"errors"
	"net"
	"sync"
)

// Tracker is the set of a server's live client connections, so that
// shutdown can close idle ones at once, wait for busy ones to finish, and
// close what is left at the deadline. A connection is busy from Add until
// it says it is idle (an HTTP keep-alive connection between requests).
// Adding, removing and state changes take a mutex once per connection or
// request, never per byte.
type Tracker struct {
	// Limit, when set, caps live connections: Add takes a slot and
	// Remove gives it back, so no path can leak one.
	Limit *Limiter
	// Hits, when set, counts the clients refused at the limit
	// (MaxConns) for this server.
	Hits *Hits

	mu       sync.Mutex
	conns    map[net.Conn]state
	draining bool
	empty    chan struct{} // closed when conns becomes empty while draining
}

type state struct {
	idle  bool
	close func() // how to close it, when not c.Close (a tunnel)
}

// Errors from Add.
var (
	ErrDraining = errors.New("shutting down")
	ErrLimit    = errors.New("connection limit reached")
)

// Add registers c as busy. During shutdown it closes c and returns
// ErrDraining; at the connection limit it returns ErrLimit and leaves c
// for the caller to refuse in its protocol and close.
func (t *Tracker) Add(c net.Conn) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining {
		c.Close()
		return ErrDraining
	}
	if !t.Limit.Acquire() {
		t.Hits.Add(MaxConns)
		return ErrLimit
	}
	if t.conns == nil {
		t.conns = make(map[net.Conn]state)
	}
	t.conns[c] = state{}
	return nil
}

// SetCloser makes shutdown close c by calling f (a tunnel's Close, which
// also ends its parked directions) instead of c.Close.
func (t *Tracker) SetCloser(c net.Conn, f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st, ok := t.conns[c]; ok {
		st.close = f
		t.conns[c] = st
	}
}

func (st state) closeConn(c net.Conn) {
	if st.close != nil {
		st.close()
		return
	}
	c.Close()
}

// Idle marks c idle. It returns false when the tracker is draining: the
// caller must then close c instead of waiting for another request.
func (t *Tracker) Idle(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining {
		return false
	}
	t.conns[c] = state{idle: true}
	return true
}

// Busy marks c busy again (a request has started). It returns false when
// the tracker is draining and c was idle, in which case it is being closed.
func (t *Tracker) Busy(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining {
		return false
	}
	t.conns[c] = state{}
	return true
}

// Remove forgets c; it does not close it.
func (t *Tracker) Remove(c net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.conns[c]; ok {
		delete(t.conns, c)
		t.Limit.Release()
	}
	if len(t.conns) == 0 && t.empty != nil {
		close(t.empty)
		t.empty = nil
	}
}

// Len returns the number of live connections.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// Drain refuses new connections, closes idle ones, waits until every busy
// one has been removed or ctx ends, then closes whatever is still open.
// It returns ctx.Err() if it had to close busy connections.
func (t *Tracker) Drain(ctx context.Context) error {
	t.mu.Lock()
	t.draining = true
	for c, st := range t.conns {
		if st.idle {
			c.Close()
		}
	}
	var empty chan struct{}
	if len(t.conns) > 0 {
		if t.empty == nil {
			t.empty = make(chan struct{})
		}
		empty = t.empty
	}
	t.mu.Unlock()
	if empty == nil {
		return nil
	}
	select {
	case <-empty:
		return nil
	case <-ctx.Done():
		t.CloseAll()
		return ctx.Err()
	}
}

// CloseAll closes every live connection now and refuses new ones.
func (t *Tracker) CloseAll() {
	t.mu.Lock()
	t.draining = true
	conns := make(map[net.Conn]state, len(t.conns))
	for c, st := range t.conns {
		conns[c] = st
	}
	t.mu.Unlock()
	// Outside the lock: a tunnel's close ends in Remove.
	for c, st := range conns {
		st.closeConn(c)
	}
}

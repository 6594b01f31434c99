package tunnel

import (
	"context"
	"net"
	"sync"
)

// Tracker is the set of a listener's live connections, so that shutdown
// can wait for them to drain and then close what is left. http.Server
// forgets hijacked connections, so CONNECT tunnels are tracked here.
// Adding and removing take a mutex once per connection, never per byte.
type Tracker struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	idle   chan struct{} // closed when conns becomes empty while draining
}

// Add registers c. It returns false, and closes c, once the tracker has
// been closed: a connection accepted during shutdown is not served.
func (t *Tracker) Add(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		c.Close()
		return false
	}
	if t.conns == nil {
		t.conns = make(map[net.Conn]struct{})
	}
	t.conns[c] = struct{}{}
	return true
}

// Remove forgets c; it does not close it.
func (t *Tracker) Remove(c net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.conns, c)
	if len(t.conns) == 0 && t.idle != nil {
		close(t.idle)
		t.idle = nil
	}
}

// Len returns the number of live connections.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// Drain waits until every connection has been removed or ctx ends, then
// closes whatever is still open. It returns ctx.Err() if it had to close
// connections. After Drain, Add refuses new connections.
func (t *Tracker) Drain(ctx context.Context) error {
	t.mu.Lock()
	t.closed = true
	var idle chan struct{}
	if len(t.conns) > 0 {
		if t.idle == nil {
			t.idle = make(chan struct{})
		}
		idle = t.idle
	}
	t.mu.Unlock()
	if idle == nil {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		t.CloseAll()
		return ctx.Err()
	}
}

// CloseAll closes every live connection now and refuses new ones.
func (t *Tracker) CloseAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for c := range t.conns {
		c.Close()
	}
}

package udploop

import (
	"sync"
	"sync/atomic"
)

// Group is a fixed number of loops, started when first asked for, that
// sockets are spread over. The zero Group is not usable: see NewGroup.
type Group struct {
	n    int
	next atomic.Uint32

	mu     sync.Mutex
	loops  []*Loop
	closed bool
}

// NewGroup returns a group of n loops (at least one); none run until Next.
func NewGroup(n int) *Group { return &Group{n: max(n, 1)} }

// Next returns the next loop in turn, starting the loops on first use.
// Sockets that write to each other (an association's two) must share one.
func (g *Group) Next() (*Loop, error) {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil, ErrClosed
	}
	for len(g.loops) < g.n {
		l, err := newLoop()
		if err != nil {
			g.mu.Unlock()
			return nil, err
		}
		g.loops = append(g.loops, l)
	}
	loops := g.loops
	g.mu.Unlock()
	return loops[int(g.next.Add(1)-1)%len(loops)], nil
}

// Close stops every loop, closing the sockets they hold, and waits for
// their goroutines. Later calls to Next fail.
func (g *Group) Close() {
	g.mu.Lock()
	g.closed = true
	loops := g.loops
	g.loops = nil
	g.mu.Unlock()
	for _, l := range loops {
		l.close()
	}
}

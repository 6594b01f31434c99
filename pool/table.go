package pool

import (
	"sync"
	"sync/atomic"
)

// Table holds one value per source, by Source.Index, for state a caller
// keeps per source (upstream connections, metric children). Get is one
// atomic load and an index on the hot path; a source added by a reload
// (see Rebuild) gets its value made on first use, under a lock taken only
// then.
type Table[T any] struct {
	vals atomic.Pointer[[]*T]
	mu   sync.Mutex
	make func(*Source) *T
}

// NewTable returns a table that makes a source's value with mk, for each
// of p's sources now and for any later source on first use.
func NewTable[T any](p *Pool, mk func(*Source) *T) *Table[T] {
	t := &Table[T]{make: mk}
	vals := make([]*T, p.MaxIndex())
	for _, s := range p.Sources() {
		vals[s.Index] = mk(s)
	}
	t.vals.Store(&vals)
	return t
}

// Get returns src's value.
func (t *Table[T]) Get(src *Source) *T {
	if v := *t.vals.Load(); src.Index < len(v) && v[src.Index] != nil {
		return v[src.Index]
	}
	return t.add(src)
}

func (t *Table[T]) add(src *Source) *T {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.vals.Load()
	if src.Index < len(old) && old[src.Index] != nil {
		return old[src.Index]
	}
	// Copy on write: readers holding the old slice keep a valid one.
	vals := make([]*T, max(len(old), src.Index+1))
	copy(vals, old)
	vals[src.Index] = t.make(src)
	t.vals.Store(&vals)
	return vals[src.Index]
}

// All returns every value made so far (nil where none was), for sweeps
// such as closing idle upstream connections.
func (t *Table[T]) All() []*T { return *t.vals.Load() }

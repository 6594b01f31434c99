package httpproxy

import "runtime"

// runtimeAlloc is the process's cumulative heap allocation: what a hostile
// peer made rotor allocate shows as its growth, whatever was freed since.
type runtimeAlloc struct{ total uint64 }

func (a *runtimeAlloc) read() {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	a.total = m.TotalAlloc
}

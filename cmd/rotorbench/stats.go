package main

import (
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// result is one workload run against one proxy (or direct).
type result struct {
	Workload string
	Proxy    string
	Conc     int

	Requests int64
	Errors   int64
	FirstErr string
	Elapsed  time.Duration
	P50      time.Duration
	P90      time.Duration
	P99      time.Duration
	Bytes    int64

	// CPU is the proxy's CPU time (user+system, whole process tree) per
	// 1,000 requests; negative when there is no proxy process.
	CPU time.Duration
	// GatewayCPU is, for a chain, the part of CPU its gateway spent (the
	// rest is the exit's): what one hop costs on a host of its own.
	GatewayCPU time.Duration
	// Sources counts, per address the target reported, the requests that
	// arrived from it.
	Sources map[string]int
	// Windows holds completed requests per window of the run, for
	// sustained runs.
	Windows []int64

	// Idle runs: per open tunnel.
	Tunnels      int
	RSSPer       float64 // bytes
	FDsPer       float64
	GoroutinePer float64 // -1 when unknown
}

func (r result) RPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// MBps is the body throughput in MB/s (10^6 bytes).
func (r result) MBps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes) / 1e6 / r.Elapsed.Seconds()
}

// recorder is one worker's tally; workers never share one.
type recorder struct {
	lat      []time.Duration
	sources  map[string]int
	errors   int64
	firstErr string
	bytes    int64
}

func newRecorder() *recorder {
	return &recorder{lat: make([]time.Duration, 0, 1<<14), sources: map[string]int{}}
}

func (r *recorder) ok(d time.Duration, src []byte) {
	r.lat = append(r.lat, d)
	if src != nil {
		r.sources[strings.TrimSpace(string(src))]++
	}
}

func (r *recorder) fail(err error) {
	r.errors++
	if r.firstErr == "" {
		r.firstErr = err.Error()
	}
}

// merge combines worker tallies into a result.
func merge(res *result, recs []*recorder) {
	var all []time.Duration
	res.Sources = map[string]int{}
	for _, r := range recs {
		all = append(all, r.lat...)
		res.Errors += r.errors
		res.Bytes += r.bytes
		if res.FirstErr == "" {
			res.FirstErr = r.firstErr
		}
		for k, v := range r.sources {
			res.Sources[k] += v
		}
	}
	res.Requests = int64(len(all))
	slices.Sort(all)
	res.P50, res.P90, res.P99 = percentile(all, 50), percentile(all, 90), percentile(all, 99)
}

// percentile returns the p-th percentile of sorted (nearest rank).
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[max(i-1, 0)]
}

// sourceList renders a histogram as "127.0.0.2:25 127.0.0.3:25".
func sourceList(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteByte(':')
		b.WriteString(itoa(m[k]))
	}
	return b.String()
}

func itoa(n int) string { return strconv.Itoa(n) }

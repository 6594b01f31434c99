package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// runOpts describe one run.
type runOpts struct {
	Name     string    // proxy name in reports ("direct" for none)
	Via      proxySpec // zero: direct
	Target   string    // target IP:port
	ByName   bool      // address the target as localhost:port (SOCKS5 domain)
	Conc     int
	Duration time.Duration
	// MaxRequests bounds the run by count as well as time.
	MaxRequests int64
	PID         int    // proxy process, for CPU; 0 for none
	ExtraPIDs   []int  // more processes of the same proxy (a chain's exit), whose CPU counts too
	DebugAddr   string // rotor's pprof listener, for goroutine counts
	Window      time.Duration
}

const dialTimeout = 5 * time.Second

func (o runOpts) targetAddr() string {
	if o.ByName {
		_, port, _ := net.SplitHostPort(o.Target)
		return "localhost:" + port
	}
	return o.Target
}

// drive runs op on o.Conc workers until the duration or the request bound
// is reached. op returns the body (the source address for /ip) or an
// error; the worker's state (a kept-alive connection) lives in its closure.
func drive(o runOpts, workload string, newOp func() (op func(*recorder) ([]byte, error), done func())) result {
	res := result{Workload: workload, Proxy: o.Name, Conc: o.Conc, CPU: -1}
	var issued atomic.Int64
	window := o.Window
	if window <= 0 {
		window = o.Duration + time.Second
	}
	windows := make([]atomic.Int64, int(o.Duration/window)+2)
	recs := make([]*recorder, o.Conc)
	var cpu0, gw0 time.Duration
	if o.PID > 0 {
		cpu0, gw0 = o.cpu(), cpuTime(o.PID)
	}
	start := time.Now()
	deadline := start.Add(o.Duration)
	var wg sync.WaitGroup
	for i := range recs {
		recs[i] = newRecorder()
		wg.Add(1)
		go func(rec *recorder) {
			defer wg.Done()
			op, done := newOp()
			defer done()
			for time.Now().Before(deadline) && (o.MaxRequests <= 0 || issued.Add(1) <= o.MaxRequests) {
				t0 := time.Now()
				src, err := op(rec)
				if err != nil {
					rec.fail(err)
					continue
				}
				t1 := time.Now()
				rec.ok(t1.Sub(t0), src)
				if w := int(t1.Sub(start) / window); w < len(windows) {
					windows[w].Add(1)
				}
			}
		}(recs[i])
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	merge(&res, recs)
	if o.PID > 0 && res.Requests > 0 {
		res.CPU = (o.cpu() - cpu0) * 1000 / time.Duration(res.Requests)
		if len(o.ExtraPIDs) > 0 {
			res.GatewayCPU = (cpuTime(o.PID) - gw0) * 1000 / time.Duration(res.Requests)
		}
	}
	if o.Window > 0 {
		for i := range windows {
			if time.Duration(i+1)*window <= res.Elapsed {
				res.Windows = append(res.Windows, windows[i].Load())
			}
		}
	}
	return res
}

// runKeepAlive: persistent client connections sending GET /ip, absolute
// form through an HTTP proxy, origin form directly.
func runKeepAlive(o runOpts, workload string) result {
	req := []byte("GET /ip HTTP/1.1\r\nHost: " + o.Target + "\r\n\r\n")
	addr := o.Target
	if o.Via.HTTP != "" {
		h := "GET http://" + o.Target + "/ip HTTP/1.1\r\nHost: " + o.Target + "\r\n"
		if o.Via.User != "" {
			h += "Proxy-Authorization: Basic " + o.Via.basic() + "\r\n"
		}
		req, addr = []byte(h+"\r\n"), o.Via.HTTP
	}
	return drive(o, workload, func() (func(*recorder) ([]byte, error), func()) {
		var c *conn
		body := make([]byte, 0, 64)
		op := func(*recorder) ([]byte, error) {
			// A server may close an idle keep-alive connection without
			// saying so (tinyproxy does after every request); like any
			// HTTP client, retry once on a fresh connection when a reused
			// one fails before a response.
			for attempt := 0; ; attempt++ {
				reused := c != nil
				if c == nil {
					var err error
					if o.Via.HTTP != "" {
						c, err = o.Via.dialHTTP(dialTimeout)
					} else {
						c, err = dial(addr, dialTimeout)
					}
					if err != nil {
						return nil, err
					}
				}
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				b, _, keep, err := c.get(req, body)
				if err != nil || !keep {
					c.Close()
					c = nil
				}
				if err != nil && reused && attempt == 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
					continue
				}
				return b, err
			}
		}
		return op, func() {
			if c != nil {
				c.Close()
			}
		}
	})
}

// cpu is the CPU time of the proxy's processes so far.
func (o runOpts) cpu() time.Duration {
	t := cpuTime(o.PID)
	for _, pid := range o.ExtraPIDs {
		t += cpuTime(pid)
	}
	return t
}

// open returns a connection to the target: direct, CONNECT or SOCKS5.
func (o runOpts) open() (*conn, error) {
	switch {
	case o.Via.HTTP != "":
		c, err := o.Via.dialHTTP(dialTimeout)
		if err != nil {
			return nil, err
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := c.connectTunnel(o.targetAddr(), o.Via); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	case o.Via.SOCKS != "":
		c, err := dial(o.Via.SOCKS, dialTimeout)
		if err != nil {
			return nil, err
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := c.socksTunnel(o.targetAddr(), o.Via); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	return dial(o.Target, dialTimeout)
}

// runNewConn: a new client connection per request: tunnel set-up (CONNECT
// or SOCKS5, or nothing directly), one GET /ip inside, close.
func runNewConn(o runOpts, workload string) result {
	req := []byte("GET /ip HTTP/1.1\r\nHost: " + o.Target + "\r\n\r\n")
	return drive(o, workload, func() (func(*recorder) ([]byte, error), func()) {
		body := make([]byte, 0, 64)
		return func(*recorder) ([]byte, error) {
			c, err := o.open()
			if err != nil {
				return nil, err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			b, _, _, err := c.get(req, body)
			return b, err
		}, func() {}
	})
}

// runBulk downloads size bytes through one tunnel (or directly).
func runBulk(o runOpts, workload string, size int64) result {
	req := []byte(fmt.Sprintf("GET /bytes/%d HTTP/1.1\r\nHost: %s\r\n\r\n", size, o.Target))
	o.Conc, o.MaxRequests = 1, 1
	o.Duration = 10 * time.Minute
	return drive(o, workload, func() (func(*recorder) ([]byte, error), func()) {
		return func(rec *recorder) ([]byte, error) {
			c, err := o.open()
			if err != nil {
				return nil, err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
			_, n, _, err := c.get(req, nil)
			rec.bytes += n
			if err == nil && n != size {
				err = fmt.Errorf("got %d of %d bytes", n, size)
			}
			return nil, err
		}, func() {}
	})
}

// runIdle opens k tunnels, each proven with one GET /ip, and reports the
// proxy's RSS, descriptors and goroutines per tunnel while all are open.
func runIdle(o runOpts, workload string, k int) result {
	res := result{Workload: workload, Proxy: o.Name, Tunnels: k, CPU: -1, GoroutinePer: -1}
	req := []byte("GET /ip HTTP/1.1\r\nHost: " + o.Target + "\r\n\r\n")
	// Measure tunnels that are idle, not just opened: rotor moves a
	// silent tunnel to small-stack goroutines after a second.
	settle := func() { time.Sleep(2500 * time.Millisecond) }
	settle()
	rss0, fd0, g0 := rssBytes(o.PID), fdCount(o.PID), goroutines(o.DebugAddr)
	conns := make([]*conn, 0, k)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	rec := newRecorder()
	start := time.Now()
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	var failed atomic.Int64
	for i := 0; i < k && failed.Load() == 0; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := o.open()
			if err == nil {
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _, _, err = c.get(req, make([]byte, 0, 64))
				_ = c.SetDeadline(time.Time{})
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if c != nil {
					c.Close()
				}
				failed.Add(1)
				rec.fail(err)
				return
			}
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	merge(&res, []*recorder{rec})
	res.Requests = int64(len(conns))
	if len(conns) == 0 {
		return res
	}
	settle()
	n := float64(len(conns))
	res.RSSPer = float64(rssBytes(o.PID)-rss0) / n
	res.FDsPer = float64(fdCount(o.PID)-fd0) / n
	if g1 := goroutines(o.DebugAddr); g0 >= 0 && g1 >= 0 {
		res.GoroutinePer = float64(g1-g0) / n
	}
	return res
}

package serve

import (
	"errors"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Acceptor runs accept loops for a server's listeners and closes them all
// at shutdown. Both the HTTP and the SOCKS5 server use it.
//
// Connection handlers run on reused worker goroutines: a handshake grows
// a new goroutine's stack from 2 KiB through parsing and dialing, and
// copying it as it grows cost about 8% of rotor's CPU per new connection.
// A worker that finished a connection waits workerIdle for the next one,
// keeping its stack; the accept loop hands a connection to a waiting
// worker or starts a new one, so there are never fewer workers than
// connections being handled.
type Acceptor struct {
	mu     sync.Mutex
	set    map[net.Listener]struct{}
	closed bool
	done   chan struct{}  // closed by Close: idle workers exit
	work   chan net.Conn  // unbuffered: a send succeeds only to a waiting worker
	wg     sync.WaitGroup // workers, and goroutines started by Go
	log    zerolog.Logger // for recovered panics
}

// workerIdle is how long a worker waits for another connection.
const workerIdle = 10 * time.Second

func (a *Acceptor) init() {
	if a.set == nil {
		a.set = map[net.Listener]struct{}{}
		a.done = make(chan struct{})
		a.work = make(chan net.Conn)
	}
}

// Serve accepts on ln and calls handle for each connection on a worker
// goroutine (reused: see Acceptor), until Close. It returns nil after Close, or the listener's
// error. Running out of descriptors backs off (5 ms doubling to 1 s)
// instead of spinning, and serving resumes by itself when fds free up.
func (a *Acceptor) Serve(ln net.Listener, log zerolog.Logger, handle func(net.Conn)) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		ln.Close()
		return nil
	}
	a.init()
	a.set[ln] = struct{}{}
	a.log = log
	done, work := a.done, a.work
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.set, ln)
		a.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if a.Closed() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				log.Warn().Err(err).Dur("retry_in", backoff).Msg("accept failed")
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		select {
		case work <- c:
		default:
			a.wg.Add(1)
			go a.worker(c, handle, work, done)
		}
	}
}

// worker handles c, then further connections, until it has waited
// workerIdle for one or the acceptor closes.
func (a *Acceptor) worker(c net.Conn, handle func(net.Conn), work <-chan net.Conn, done <-chan struct{}) {
	defer a.wg.Done()
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		a.safely(func() { handle(c) }, c)
		t.Reset(workerIdle)
		select {
		case c = <-work:
		case <-t.C:
			return
		case <-done:
			return
		}
	}
}

// Go runs f in a goroutine that Wait waits for. Call it only from a
// goroutine Wait already waits for (a connection handler handing its
// connection on to a tunnel).
func (a *Acceptor) Go(f func()) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.safely(f, nil)
	}()
}

// safely runs f; a panic is logged with its stack, c (if any) is closed,
// and the server goes on, as net/http's server does for its handlers: one
// connection's bad input must not take the others down.
func (a *Acceptor) safely(f func(), c net.Conn) {
	defer func() {
		if v := recover(); v != nil {
			buf := make([]byte, 16<<10)
			buf = buf[:runtime.Stack(buf, false)]
			a.mu.Lock()
			log := a.log
			a.mu.Unlock()
			log.Error().Interface("panic", v).Bytes("stack", buf).Msg("recovered panic serving a connection")
			if c != nil {
				c.Close()
			}
		}
	}()
	f()
}

// Wait waits for every connection handler and every goroutine started by
// Go to return.
func (a *Acceptor) Wait() { a.wg.Wait() }

// Closed reports whether Close has been called.
func (a *Acceptor) Closed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closed
}

// Close closes every listener; Serve calls return nil.
func (a *Acceptor) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.init()
	if !a.closed {
		close(a.done)
	}
	a.closed = true
	for ln := range a.set {
		ln.Close()
	}
}

func isTemporary(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

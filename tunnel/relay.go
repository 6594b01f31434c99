// Package tunnel moves bytes: the one relay every tunnel uses (HTTP
// CONNECT, WebSocket upgrades and SOCKS5 alike), splicing between kernel
// sockets, propagating half-closes, ending idle tunnels, and the Parker
// that holds idle tunnels without goroutines. Accepting and counting
// connections is package serve's.
package tunnel

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// Stats is what a finished relay moved.
type Stats struct {
	Up   int64 // client to target, including bytes the client sent early
	Down int64 // target to client
}

// ErrIdle ends a tunnel that moved no byte either way for the idle timeout.
var ErrIdle = errors.New("tunnel idle timeout")

// Options configure a relay.
type Options struct {
	// Idle closes a tunnel that moves no byte either way for this long
	// (ErrIdle); zero means never.
	Idle time.Duration
	// Go starts a goroutine; nil means the go statement. Servers pass
	// their Acceptor's Go, so that shutdown waits for relay goroutines.
	Go func(func())
	// Parker, when set, holds directions silent for parkAfter (250 ms)
	// without a goroutine.
	Parker *Parker
	// Count, when set, is told the bytes moved client to target (0) and
	// target to client (1) while the tunnel runs: at least every
	// parkAfter with a Parker, else when a read deadline passes or the
	// direction ends. Not per write: that would put a call on every
	// chunk of a bulk transfer.
	Count [2]Adder
}

// Adder takes a count; prometheus.Counter is one.
type Adder interface{ Add(float64) }

// errClosed is reported for a tunnel closed from outside (shutdown).
var errClosed = errors.New("tunnel closed by rotor")

// Tunnel is a running relay.
type Tunnel struct{ r *relay }

// Close ends the tunnel now: both connections are closed and done is
// called once both directions have stopped, parked or not.
func (t *Tunnel) Close() { t.r.close(errClosed) }

// Start relays between client and target on goroutines of its own and
// calls done once both directions have ended. It first forwards early
// (bytes the client sent before the tunnel was up, already read into a
// protocol parser's buffer) to target. When one side finishes sending
// (EOF), the other side's write half is shut (CloseWrite), so a half-close
// travels end to end and the reply still flows back. When a direction
// fails (reset, write error), both connections are closed so the other
// direction cannot hang.
//
// done owns both conns and must close them.
func Start(client, target net.Conn, early []byte, o Options, done func(Stats, error)) *Tunnel {
	if o.Go == nil {
		o.Go = func(f func()) { go f() }
	}
	r := &relay{opts: o, done: done}
	r.live.Store(2)
	r.touch()
	r.dirs[0] = direction{r: r, dst: target, src: client, count: o.Count[0]}
	r.dirs[1] = direction{r: r, dst: client, src: target, count: o.Count[1]}
	o.Go(func() {
		if len(early) > 0 {
			n, err := target.Write(early)
			r.dirs[0].n += int64(n)
			r.dirs[0].add(int64(n))
			if err != nil {
				// Nothing relayed yet: end both directions at once.
				client.Close()
				target.Close()
				r.dirs[0].err, r.dirs[1].err = err, nil
				r.live.Store(0)
				r.finish()
				return
			}
		}
		o.Go(r.dirs[0].loop)
		r.dirs[1].loop()
	})
	return &Tunnel{r}
}

// relay is the state two directions of one tunnel share.
type relay struct {
	opts     Options
	done     func(Stats, error)
	dirs     [2]direction          // 0: client to target, 1: target to client
	last     atomic.Int64          // unix nanoseconds of the last byte either way
	finished atomic.Int32          // directions that have stopped reading
	live     atomic.Int32          // directions that have not ended
	closeErr atomic.Pointer[error] // why the tunnel was closed from outside
}

// close closes the tunnel from outside (shutdown, idle sweep): parked
// directions are taken out of the parker first, so that they are resumed
// and end instead of waiting for an event a closed socket never sends.
func (r *relay) close(why error) {
	r.closeErr.CompareAndSwap(nil, &why)
	var resume []*direction
	if p := r.opts.Parker; p != nil {
		for i := range r.dirs {
			if p.take(&r.dirs[i]) {
				resume = append(resume, &r.dirs[i])
			}
		}
	}
	r.dirs[0].src.Close()
	r.dirs[0].dst.Close()
	for _, d := range resume {
		d.resume()
	}
}

func (r *relay) touch() { r.last.Store(time.Now().UnixNano()) }

func (r *relay) idleFor() time.Duration { return time.Duration(time.Now().UnixNano() - r.last.Load()) }

// finish reports the result once both directions have ended.
func (r *relay) finish() {
	st := Stats{Up: r.dirs[0].n, Down: r.dirs[1].n}
	err := errors.Join(r.dirs[0].err, r.dirs[1].err)
	if why := r.closeErr.Load(); why != nil {
		err = errors.Join(*why, err)
	}
	r.done(st, err)
}

// direction copies src to dst.
type direction struct {
	r        *relay
	dst, src net.Conn
	n        int64
	err      error
	token    uint64 // while parked
	count    Adder
}

func (d *direction) add(n int64) {
	if d.count != nil && n > 0 {
		d.count.Add(float64(n))
	}
}

// loop copies until the direction ends, or parks it after parkAfter
// without a byte either way.
func (d *direction) loop() {
	r := d.r
	for {
		var deadline time.Time
		if r.opts.Idle > 0 {
			deadline = time.Unix(0, r.last.Load()).Add(r.opts.Idle)
		}
		if r.opts.Parker != nil {
			if park := time.Now().Add(parkAfter); deadline.IsZero() || park.Before(deadline) {
				deadline = park
			}
		}
		if err := d.src.SetReadDeadline(deadline); err != nil {
			d.end(err)
			return
		}
		n, err := copyConn(d.dst, d.src, r)
		d.n += n
		d.add(n)
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			d.end(err)
			return
		}
		idle := r.idleFor()
		if r.opts.Idle > 0 && idle >= r.opts.Idle {
			d.end(ErrIdle)
			return
		}
		if idle >= parkAfter && r.opts.Parker != nil {
			if err := d.src.SetReadDeadline(time.Time{}); err != nil {
				d.end(err)
				return
			}
			if r.opts.Parker.park(d) {
				return // the parker resumes d when its socket is readable
			}
		}
	}
}

// resume continues a parked direction on a new goroutine.
func (d *direction) resume() { d.r.opts.Go(d.loop) }

// end closes the direction: on EOF it passes the FIN on, on an error it
// closes both conns so the other direction ends too.
func (d *direction) end(err error) {
	r := d.r
	if err == nil && r.finished.Add(1) == 1 {
		// The other direction is still open: pass the FIN on. The last
		// direction to end needs no CloseWrite, the owner's Close sends it.
		err = closeWrite(d.dst)
	}
	if err != nil {
		r.finished.Add(1)
		// Unblock the opposite direction: a peer that reset will not send
		// the FIN it is waiting for.
		d.src.Close()
		d.dst.Close()
		if errors.Is(err, net.ErrClosed) {
			// Closed by the other direction's failure, or by shutdown:
			// that failure is the one to report.
			err = nil
		}
	}
	d.err = err
	if r.live.Add(-1) == 0 {
		r.finish()
	}
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		err := cw.CloseWrite()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		return err
	}
	return nil
}

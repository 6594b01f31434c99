// Package tunnel holds the connection plumbing both listeners share: the
// one relay every tunnel uses (HTTP CONNECT and SOCKS5 alike), the accept
// loop, and the set of live connections a server drains on shutdown.
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

// Relay forwards early (bytes the client sent before the tunnel was up,
// already read into a protocol parser's buffer) to target, then copies
// both ways until both directions have ended. When one side finishes
// sending (EOF), the other side's write half is shut (CloseWrite), so a
// half-close travels end to end and the reply still flows back. When a
// direction fails (reset, write error), both connections are closed so
// the other direction cannot hang. With idle > 0, a tunnel that moves no
// byte either way for that long is closed with ErrIdle.
//
// The caller owns and closes both conns.
func Relay(client, target net.Conn, early []byte, idle time.Duration) (Stats, error) {
	var st Stats
	if len(early) > 0 {
		n, err := target.Write(early)
		st.Up += int64(n)
		if err != nil {
			return st, err
		}
	}
	r := &relay{idle: idle}
	r.touch()
	done := make(chan copyResult, 1)
	go r.copyHalf(target, client, done) // up
	down := r.copyHalf(client, target, nil)
	up := <-done
	st.Up += up.n
	st.Down = down.n
	return st, errors.Join(up.err, down.err)
}

// relay is the state two directions of one tunnel share.
type relay struct {
	idle     time.Duration
	last     atomic.Int64 // unix nanoseconds of the last byte either way
	finished atomic.Int32 // directions that have ended
}

func (r *relay) touch() {
	if r.idle > 0 {
		r.last.Store(time.Now().UnixNano())
	}
}

type copyResult struct {
	n   int64
	err error
}

// copyHalf is a named function so that relay goroutines are easy to spot
// in stack dumps. It sends its result on done when done is not nil.
func (r *relay) copyHalf(dst, src net.Conn, done chan<- copyResult) copyResult {
	n, err := r.copy(dst, src)
	if err == nil && r.finished.Add(1) == 1 {
		// The other direction is still open: pass the FIN on. The last
		// direction to end needs no CloseWrite, the caller's Close sends it.
		err = closeWrite(dst)
	}
	if err != nil {
		r.finished.Add(1)
		// Unblock the opposite direction: a peer that reset will not send
		// the FIN it is waiting for.
		src.Close()
		dst.Close()
		if errors.Is(err, net.ErrClosed) {
			// Closed by the other direction's failure, or by shutdown:
			// that failure is the one to report.
			err = nil
		}
	}
	res := copyResult{n, err}
	if done != nil {
		done <- res
	}
	return res
}

// copy runs copyConn, re-arming the read deadline while the tunnel as a
// whole is active: one direction may wait for minutes while the other
// streams, and that is not idleness.
func (r *relay) copy(dst, src net.Conn) (int64, error) {
	var total int64
	for {
		if r.idle > 0 {
			last := time.Unix(0, r.last.Load())
			if err := src.SetReadDeadline(last.Add(r.idle)); err != nil {
				return total, err
			}
		}
		n, err := copyConn(dst, src, r)
		total += n
		if r.idle > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			if time.Since(time.Unix(0, r.last.Load())) < r.idle {
				continue // the other direction was busy
			}
			return total, ErrIdle
		}
		return total, err
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

// Package tunnel holds the one relay every tunnel uses (HTTP CONNECT and
// SOCKS5 alike) and the set of live connections a listener drains on
// shutdown.
package tunnel

import (
	"errors"
	"net"
)

// Stats is what a finished relay moved.
type Stats struct {
	Up   int64 // client to target, including bytes the client sent early
	Down int64 // target to client
}

// Relay forwards early (bytes the client sent before the tunnel was up,
// already read into a protocol parser's buffer) to target, then copies
// both ways until both directions have ended. When one side finishes
// sending (EOF), the other side's write half is shut (CloseWrite), so a
// half-close travels end to end and the reply still flows back. When a
// direction fails (reset, write error), both connections are closed so
// the other direction cannot hang.
//
// The caller owns and closes both conns.
func Relay(client, target net.Conn, early []byte) (Stats, error) {
	var st Stats
	if len(early) > 0 {
		n, err := target.Write(early)
		st.Up += int64(n)
		if err != nil {
			return st, err
		}
	}
	done := make(chan copyResult, 1)
	go copyHalf(target, client, done) // up
	down := copyHalf(client, target, nil)
	up := <-done
	st.Up += up.n
	st.Down = down.n
	return st, errors.Join(up.err, down.err)
}

type copyResult struct {
	n   int64
	err error
}

// copyHalf is a named function so that relay goroutines are easy to spot
// in stack dumps. It sends its result on done when done is not nil.
func copyHalf(dst, src net.Conn, done chan<- copyResult) copyResult {
	n, err := copyConn(dst, src)
	if err == nil {
		err = closeWrite(dst)
	}
	if err != nil {
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
	r := copyResult{n, err}
	if done != nil {
		done <- r
	}
	return r
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

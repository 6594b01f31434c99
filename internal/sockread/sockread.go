// Package sockread reads a delimited head from a TCP socket without
// reading past it, so that what follows stays in the socket for whoever
// relays it next (and the connection stays a *net.TCPConn, which the
// relay splices). It peeks (MSG_PEEK) at what has arrived and consumes
// exactly the head: all it peeked while the delimiter is not in it, so
// that the next peek waits for more, then up to the delimiter's end. A
// head that comes in one segment costs two system calls.
//
// It serves an HTTP upstream's answer to CONNECT (package pool) and a
// PROXY protocol v1 line (package serve). Prefixed hands bytes already
// read back before a connection's own.
package sockread

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
)

// ErrTooLong is a head longer than the bound given to Through.
var ErrTooLong = errors.New("head too long")

// Through reads from c up to and including the first delim, at most max
// bytes in all, and returns what it read. Deadlines are c's. On a
// mismatch the match restarts at delim's first byte, which is right for
// "\r\n" and "\r\n\r\n", the delimiters used here.
func Through(c *net.TCPConn, delim string, max int) ([]byte, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	head := make([]byte, 0, min(max, 512))
	buf := make([]byte, min(max, 4096))
	matched := 0 // bytes of delim matched by the last bytes consumed
	for {
		n, err := peek(rc, buf)
		if err != nil {
			return head, err
		}
		take := n
		for i := 0; i < n; i++ {
			switch {
			case buf[i] == delim[matched]:
				matched++
			case buf[i] == delim[0]:
				matched = 1
			default:
				matched = 0
			}
			if matched == len(delim) {
				take = i + 1
				break
			}
		}
		if len(head)+take > max {
			return head, fmt.Errorf("%w: more than %d bytes without %q", ErrTooLong, max, delim)
		}
		if _, err := io.ReadFull(c, buf[:take]); err != nil {
			return head, err
		}
		head = append(head, buf[:take]...)
		if matched == len(delim) {
			return head, nil
		}
	}
}

// peek waits until the socket has bytes queued and copies them without
// consuming them.
func peek(rc syscall.RawConn, buf []byte) (int, error) {
	var n int
	var serr error
	err := rc.Read(func(fd uintptr) bool {
		n, _, serr = syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK)
		return serr != syscall.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err == nil && n == 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// Prefixed reads Bytes, then Src: bytes an earlier read took from a
// connection (the mixed port's first read, or what came behind a CONNECT
// answer), handed back before the connection's own. It is a value, kept
// inside the struct that needs it, so it costs no allocation of its own.
type Prefixed struct {
	Bytes []byte
	Src   io.Reader
}

func (p *Prefixed) Read(b []byte) (int, error) {
	if len(p.Bytes) == 0 {
		return p.Src.Read(b)
	}
	n := copy(b, p.Bytes)
	p.Bytes = p.Bytes[n:]
	return n, nil
}

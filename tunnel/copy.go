package tunnel

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// A buffer is held only while bytes flow. Most reads are small (requests,
// replies), so a direction starts with a 16 KiB buffer; a read that fills
// it means bulk data, and the direction moves to large buffers until it
// next waits long enough to park or time out. Idle pools then hold small
// buffers.
const (
	smallBuf = 16 << 10
	largeBuf = 256 << 10
)

var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}
	largePool = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}
)

func putBuf(b *[]byte) {
	if len(*b) == largeBuf {
		largePool.Put(b)
	} else {
		smallPool.Put(b)
	}
}

// copyConn copies src to dst until EOF or an error. Unlike io.Copy (which
// on Linux splices through a pipe pair it keeps while waiting for data,
// four descriptors per idle tunnel) it waits for readability inside
// RawConn.Read without a buffer, takes a pooled buffer only when bytes
// are there, and gives it back when the socket runs dry. Waiting longer
// than parkAfter, a direction leaves even the goroutine (see Parker).
//
// Measured against splice (rotorbench bulk), a user-space copy through
// these 16 KiB and 256 KiB buffers is faster on loopback: see
// BENCHMARKS.md.
func copyConn(dst io.Writer, src net.Conn, r *relay) (int64, error) {
	sc, ok := src.(syscall.Conn)
	if !ok {
		return io.Copy(dst, src)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return io.Copy(dst, src)
	}
	var (
		total int64
		buf   *[]byte
		n     int
		rerr  error
		bulk  bool // a read filled the small buffer: use large ones from now on
	)
	// read is the RawConn.Read callback: it reports false (wait for
	// readability) only on EAGAIN, after returning the buffer.
	read := func(fd uintptr) bool {
		if buf != nil && !bulk && n == len(*buf) {
			bulk = true
			smallPool.Put(buf)
			buf = nil
		}
		if buf == nil {
			if bulk {
				buf = largePool.Get().(*[]byte)
			} else {
				buf = smallPool.Get().(*[]byte)
			}
		}
		for {
			n, rerr = unix.Read(int(fd), *buf)
			if rerr != unix.EINTR {
				break
			}
		}
		if rerr == unix.EAGAIN {
			putBuf(buf)
			buf = nil
			n = 0
			return false
		}
		return true
	}
	for {
		if err := rc.Read(read); err != nil {
			// Deadline or Close from another goroutine.
			if buf != nil {
				putBuf(buf)
				buf = nil
			}
			return total, err
		}
		if rerr != nil {
			putBuf(buf)
			return total, wrapRead(rerr)
		}
		if n <= 0 {
			putBuf(buf)
			return total, nil // EOF
		}
		r.touch()
		w, werr := dst.Write((*buf)[:n])
		total += int64(w)
		// Keep the buffer for the next read while data flows; the read
		// callback returns it as soon as the socket is empty.
		if werr != nil {
			putBuf(buf)
			return total, werr
		}
	}
}

// wrapRead gives a raw read error the shape net.Conn reads return, so
// callers classify both alike with errors.Is(err, syscall.ECONNRESET).
func wrapRead(err error) error {
	return &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", err)}
}

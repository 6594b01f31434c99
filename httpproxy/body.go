package httpproxy

import (
	"bufio"
	"errors"
	"io"
	"strconv"
	"strings"
)

// Message bodies, read from a client or an origin: a fixed length, chunked
// (RFC 9112 section 7.1) with bounded chunk-size lines and trailers, or
// until the origin closes. Chunked framing is decoded here, not by
// httputil's reader, to bound the trailer section (which that reader
// leaves to the caller) and to tell a malformed frame (400 for a client,
// 502 for an origin) from a connection that failed.

// clientBody is a request or response body as read.
type clientBody interface {
	io.Reader
	done() bool       // read to its end
	bytesRead() int64 // data bytes read so far
}

// bodyLimits bound what a chunked body's framing may read besides its
// data: the trailer section, as a head.
type bodyLimits struct {
	trailer headLimits
}

// maxChunkLine bounds a chunk-size line, extensions included; it is also
// the smallest buffer a chunked body may be read through.
const maxChunkLine = 4096

// framingError is a body whose framing is malformed or cut short by the
// peer: a client's is answered 400, an origin's ends the response.
type framingError struct{ err error }

func (e *framingError) Error() string { return "body framing: " + e.err.Error() }
func (e *framingError) Unwrap() error { return e.err }

var (
	errBadLength         = errors.New("malformed Content-Length")
	errConflictingLength = errors.New("conflicting Content-Length values")
	errChunkLine         = errors.New("malformed chunk-size line")
	errChunkEnd          = errors.New("chunk data not followed by CRLF")
)

// fixedReader reads exactly n bytes; an early EOF is io.ErrUnexpectedEOF.
type fixedReader struct {
	r    *bufio.Reader
	n    int64
	read int64
}

func (b *fixedReader) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	b.read += int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *fixedReader) done() bool       { return b.n <= 0 }
func (b *fixedReader) bytesRead() int64 { return b.read }

// closeReader reads an origin's body delimited by the origin closing.
type closeReader struct {
	r    *bufio.Reader
	read int64
	eof  bool
}

func (b *closeReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.read += int64(n)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *closeReader) done() bool       { return b.eof }
func (b *closeReader) bytesRead() int64 { return b.read }

// chunkedReader decodes a chunked body and, at its end, reads the trailer
// section into trailer.
type chunkedReader struct {
	br      *bufio.Reader
	lim     bodyLimits
	buf     *headBuf
	left    int64 // data bytes left in the current chunk
	inChunk bool  // a chunk's data was started: CRLF follows it
	eof     bool
	err     error
	read    int64
	trailer header
}

func newChunkedReader(br *bufio.Reader, lim bodyLimits, buf *headBuf) *chunkedReader {
	return &chunkedReader{br: br, lim: lim, buf: buf}
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if c.eof {
		return 0, io.EOF
	}
	for c.left == 0 {
		if err := c.next(); err != nil {
			if err != io.EOF {
				c.err = err
			}
			return 0, err
		}
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.br.Read(p)
	c.left -= int64(n)
	c.read += int64(n)
	if err == io.EOF {
		err = &framingError{io.ErrUnexpectedEOF}
	}
	if err != nil {
		c.err = err
	}
	return n, err
}

// next ends the current chunk and reads the next chunk-size line; at the
// last chunk it reads the trailer section and returns io.EOF.
func (c *chunkedReader) next() error {
	if c.inChunk {
		var crlf [2]byte
		if _, err := io.ReadFull(c.br, crlf[:]); err != nil {
			return cutShort(err)
		}
		if crlf != [2]byte{'\r', '\n'} {
			return &framingError{errChunkEnd}
		}
		c.inChunk = false
	}
	line, err := c.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull || len(line) > maxChunkLine {
		return &framingError{errChunkLine}
	}
	if err != nil {
		return cutShort(err)
	}
	size, ok := parseChunkSize(line)
	if !ok {
		return &framingError{errChunkLine}
	}
	if size > 0 {
		c.left, c.inChunk = size, true
		return nil
	}
	tr, err := readFields(c.br, c.lim.trailer, c.buf)
	if err != nil {
		if errors.Is(err, errHeadTooLarge) || errors.Is(err, errTooManyFields) || isFieldError(err) {
			return &framingError{err}
		}
		return cutShort(err)
	}
	c.trailer = tr
	c.eof = true
	return io.EOF
}

func isFieldError(err error) bool {
	_, ok := errors.AsType[*fieldError](err)
	return ok
}

// cutShort turns the peer closing mid-frame into a framing error; timeouts
// and resets stay what they are.
func cutShort(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return &framingError{io.ErrUnexpectedEOF}
	}
	return err
}

// parseChunkSize reads "HEX[;ext]CRLF": at most 15 hex digits (a size
// below 2^60), optional white space and extensions, and a CRLF (a bare
// LF is refused: it has been used to smuggle requests).
func parseChunkSize(line []byte) (int64, bool) {
	n := len(line)
	if n < 3 || line[n-2] != '\r' {
		return 0, false
	}
	line = line[:n-2]
	var size int64
	i := 0
	for ; i < len(line); i++ {
		c := line[i]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			goto rest
		}
		if i == 15 {
			return 0, false
		}
		size = size<<4 | int64(d)
	}
rest:
	if i == 0 {
		return 0, false
	}
	for _, c := range line[i:] {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return 0, false
		}
	}
	if r := strings.TrimLeft(string(line[i:]), " \t"); r != "" && r[0] != ';' {
		return 0, false
	}
	return size, true
}

func (c *chunkedReader) done() bool       { return c.eof }
func (c *chunkedReader) bytesRead() int64 { return c.read }

// writeChunk frames p as one chunk.
func writeChunk(w *bufio.Writer, p []byte) error {
	var hex [16]byte
	w.Write(strconv.AppendInt(hex[:0], int64(len(p)), 16))
	w.WriteString("\r\n")
	w.Write(p)
	_, err := w.WriteString("\r\n")
	return err
}

// writeLastChunk ends a chunked body with the trailer fields that may be
// forwarded (see trailerAllowed).
func writeLastChunk(w *bufio.Writer, trailer header) error {
	w.WriteString("0\r\n")
	for _, f := range trailer {
		if trailerAllowed(f.name) {
			writeField(w, f.name, f.value)
		}
	}
	_, err := w.WriteString("\r\n")
	return err
}

// trailerAllowed reports whether a trailer field may be forwarded. Fields
// that frame, route, authenticate or control the message are dropped
// (RFC 9110 section 6.5.1): a trailer must not change how the message it
// ends was read, nor carry what only a head may.
func trailerAllowed(name string) bool {
	switch strings.ToLower(name) {
	case "content-length", "transfer-encoding", "host", "trailer", "te",
		"connection", "keep-alive", "proxy-connection", "upgrade",
		"authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate",
		"set-cookie", "cookie", "cache-control", "expect", "max-forwards", "pragma", "range",
		"content-encoding", "content-type", "content-range", "age", "expires", "date",
		"location", "retry-after", "vary", "x-rotor-session":
		return false
	}
	return true
}

func writeField(w *bufio.Writer, name, value string) {
	w.WriteString(name)
	w.WriteString(": ")
	w.WriteString(value)
	w.WriteString("\r\n")
}

package httpproxy

import (
	"bufio"
	"errors"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Message heads (requests, responses, chunked trailers) are read here,
// into one string per head, and kept as the list of field lines in the
// order and spelling received: what rotor forwards is those lines less
// the hop-by-hop ones, so an origin sees the client's header order and
// case, and the client the origin's. Anti-bot systems fingerprint both.
// net/textproto would canonicalize names into a map, lose the order, read
// an origin's lines without a bound, and accept a space before a colon.

// field is one field line as received: the name in the sender's spelling,
// the value without its surrounding white space. Both are substrings of
// the head's one string.
type field struct{ name, value string }

// header is a message's field lines in the order received.
type header []field

// get returns the value of the first field named name (case-insensitive).
func (h header) get(name string) (string, bool) {
	for _, f := range h {
		if strings.EqualFold(f.name, name) {
			return f.value, true
		}
	}
	return "", false
}

// count is how many fields are named name.
func (h header) count(name string) int {
	n := 0
	for _, f := range h {
		if strings.EqualFold(f.name, name) {
			n++
		}
	}
	return n
}

// hasToken reports whether a field named name lists token in its
// comma-separated value (case-insensitive), as Connection: close does.
func (h header) hasToken(name, token string) bool {
	for _, f := range h {
		if strings.EqualFold(f.name, name) && httpguts.HeaderValuesContainsToken([]string{f.value}, token) {
			return true
		}
	}
	return false
}

// headLimits bound one head: its bytes (start line, field lines and their
// line ends) and its number of field lines.
type headLimits struct {
	bytes, fields int
}

// maxHeaderFields bounds the number of field lines of any head, request,
// response or trailer, besides the byte cap.
const maxHeaderFields = 256

// Errors reading a head. A caller maps them to its side's status: a
// client's head is answered 400/431, an origin's 502.
var (
	errHeadTooLarge  = errors.New("head too large")
	errTooManyFields = errors.New("too many header fields")
)

// fieldError is a malformed field line. It names the line by position and
// never quotes it: the line may be a Proxy-Authorization with a stray
// space, and its value must reach neither a log nor an error body.
type fieldError struct {
	line   int // 1 is the first field line
	reason string
}

func (e *fieldError) Error() string {
	return "header line " + strconv.Itoa(e.line) + ": " + e.reason
}

// headBuf is the scratch space a connection reads its heads into, reused
// from one head to the next; each head is then copied out as one string.
type headBuf struct {
	b    []byte
	ends []int // end of each line in b
}

// readHead reads a start line and field lines up to the empty line. The
// whole head, line ends included, is at most lim.bytes, and it has at most
// lim.fields field lines. A line may end in CRLF or a bare LF (RFC 9112
// section 2.2). A head cut short by an error (a timeout, the peer closing)
// is never taken for a whole one.
func readHead(br *bufio.Reader, lim headLimits, buf *headBuf) (start string, h header, err error) {
	buf.b, buf.ends = buf.b[:0], buf.ends[:0]
	total := 0
	for {
		line, err := readHeadLine(br, &total, lim.bytes, buf)
		if err != nil {
			return "", nil, err
		}
		if len(line) == 0 && len(buf.ends) > 0 {
			break
		}
		if len(buf.ends) > lim.fields {
			return "", nil, errTooManyFields
		}
		buf.b = append(buf.b, line...)
		buf.ends = append(buf.ends, len(buf.b))
	}
	s := string(buf.b)
	start = s[:buf.ends[0]]
	h, err = parseFields(s, buf.ends[1:], buf.ends[0])
	return start, h, err
}

// readFields reads field lines up to the empty line, as a chunked body's
// trailer section: readHead without a start line.
func readFields(br *bufio.Reader, lim headLimits, buf *headBuf) (header, error) {
	buf.b, buf.ends = buf.b[:0], buf.ends[:0]
	total := 0
	for {
		line, err := readHeadLine(br, &total, lim.bytes, buf)
		if err != nil {
			return nil, err
		}
		if len(line) == 0 {
			break
		}
		if len(buf.ends) == lim.fields {
			return nil, errTooManyFields
		}
		buf.b = append(buf.b, line...)
		buf.ends = append(buf.ends, len(buf.b))
	}
	if len(buf.ends) == 0 {
		return nil, nil
	}
	return parseFields(string(buf.b), buf.ends, 0)
}

// readHeadLine returns one line without its line end. The line is only
// valid until the next read from br. Lines longer than br's buffer are
// gathered in buf's spare capacity, still bounded by limit.
func readHeadLine(br *bufio.Reader, total *int, limit int, buf *headBuf) ([]byte, error) {
	var long []byte
	for {
		b, err := br.ReadSlice('\n')
		*total += len(b)
		if *total > limit {
			return nil, errHeadTooLarge
		}
		if err == bufio.ErrBufferFull {
			if long == nil {
				long = buf.b[len(buf.b):] // append after what is kept
			}
			long = append(long, b...)
			continue
		}
		if err != nil {
			return nil, err
		}
		if long != nil {
			b = append(long, b...)
		}
		b = b[:len(b)-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
		return b, nil
	}
}

// parseFields splits the field lines of s (ending at ends, the first
// starting at from) into names and values. It refuses what RFC 9112
// section 5 lets a recipient refuse and what has been used to smuggle
// requests past proxies: obs-fold (a line starting with white space),
// white space between a name and its colon, names that are not tokens, and
// values with control bytes.
func parseFields(s string, ends []int, from int) (header, error) {
	h := make(header, 0, len(ends))
	for i, end := range ends {
		line := s[from:end]
		from = end
		if line == "" {
			return nil, &fieldError{i + 1, "empty line"}
		}
		if line[0] == ' ' || line[0] == '\t' {
			return nil, &fieldError{i + 1, "folded line (obs-fold)"}
		}
		colon := strings.IndexByte(line, ':')
		if colon < 0 {
			return nil, &fieldError{i + 1, "no colon"}
		}
		name := line[:colon]
		if !httpguts.ValidHeaderFieldName(name) {
			if last := name[max(len(name)-1, 0):]; last == " " || last == "\t" {
				return nil, &fieldError{i + 1, "white space before the colon"}
			}
			return nil, &fieldError{i + 1, "field name is not a token"}
		}
		value := strings.Trim(line[colon+1:], " \t")
		if !validFieldValue(value) {
			return nil, &fieldError{i + 1, "control byte in the value of " + quote(name)}
		}
		h = append(h, field{name, value})
	}
	return h, nil
}

// validFieldValue reports whether v holds no control byte but HTAB
// (RFC 9110 section 5.5; obs-text is allowed).
func validFieldValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

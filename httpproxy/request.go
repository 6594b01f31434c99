package httpproxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Request heads are parsed here rather than by http.ReadRequest, which
// deletes the Host header before the caller can see whether it was
// missing or sent twice, and which folds obs-fold lines and accepts a
// space before a colon. Field syntax follows RFC 9112 section 5 and
// framing section 6:
// Transfer-Encoding must be exactly "chunked", it may not come with
// Content-Length, and Content-Length must be one decimal number. Chunked
// bodies are decoded by httputil.NewChunkedReader, which rejects bare LF
// and oversized chunk-size lines.

// errHeadTooLarge is returned when a request head exceeds maxHeaderBytes.
var errHeadTooLarge = errors.New("request head too large")

// badRequest is a parse error answered with status and its message.
type badRequest struct {
	status int
	msg    string
}

func (e *badRequest) Error() string { return e.msg }

func bad(format string, args ...any) error {
	return &badRequest{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// readRequest reads one request head from br and returns a request whose
// Body reads exactly the message body.
func readRequest(br *bufio.Reader) (*http.Request, error) {
	line, err := readLine(br)
	if err != nil {
		return nil, err
	}
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || method == "" || target == "" || !validMethod(method) {
		return nil, bad("malformed request line %s", quote(line))
	}
	major, minor, ok := http.ParseHTTPVersion(proto)
	if !ok {
		return nil, bad("malformed HTTP version %s", quote(proto))
	}
	if major != 1 {
		return nil, &badRequest{http.StatusHTTPVersionNotSupported, "HTTP version " + quote(proto) + " not supported"}
	}
	req := &http.Request{Method: method, RequestURI: target, Proto: proto, ProtoMajor: major, ProtoMinor: minor}
	if method == http.MethodConnect {
		// Authority form: host:port, nothing else.
		if strings.ContainsAny(target, "/?#@") {
			return nil, bad("CONNECT target %s is not host:port", quote(target))
		}
		req.URL = &url.URL{Host: target}
	} else if req.URL, err = url.ParseRequestURI(target); err != nil {
		return nil, bad("malformed request target %s", quote(target))
	}

	if req.Header, err = readHeader(br); err != nil {
		return nil, err
	}

	hosts, haveHost := req.Header["Host"]
	switch {
	case len(hosts) > 1:
		return nil, bad("more than one Host header")
	case !haveHost && req.ProtoAtLeast(1, 1) && method != http.MethodConnect:
		return nil, bad("missing Host header")
	case haveHost && !httpguts.ValidHostHeader(hosts[0]):
		return nil, bad("malformed Host header %s", quote(hosts[0]))
	}
	delete(req.Header, "Host")
	req.Host = req.URL.Host // absolute form wins over Host (RFC 9112 3.2.2)
	if req.Host == "" && haveHost {
		req.Host = hosts[0]
	}
	req.Close = shouldClose(req)
	if err := setBody(req, br); err != nil {
		return nil, err
	}
	return req, nil
}

// maxHeaderFields bounds the number of header lines, besides the byte cap.
const maxHeaderFields = 256

// readHeader reads header fields up to the empty line. It refuses what
// RFC 9112 5 lets a recipient refuse and what has been used to smuggle
// requests past proxies: obs-fold (a line starting with a space or tab;
// rotor answers 400 rather than joining it), whitespace between a name and
// its colon, names that are not tokens, and values with control bytes.
func readHeader(br *bufio.Reader) (http.Header, error) {
	h := make(http.Header)
	for i := 0; ; i++ {
		line, err := readLine(br)
		if err != nil {
			return nil, err
		}
		if line == "" {
			return h, nil
		}
		if i == maxHeaderFields {
			return nil, &badRequest{http.StatusRequestHeaderFieldsTooLarge, "more than " + strconv.Itoa(maxHeaderFields) + " header fields"}
		}
		if line[0] == ' ' || line[0] == '\t' {
			return nil, bad("folded header line (obs-fold) %s", quote(line))
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || !httpguts.ValidHeaderFieldName(name) {
			return nil, bad("invalid header line %s", quote(line))
		}
		value = strings.Trim(value, " \t")
		if !httpguts.ValidHeaderFieldValue(value) {
			return nil, bad("invalid value for header %s", quote(name))
		}
		key := textproto.CanonicalMIMEHeaderKey(name)
		h[key] = append(h[key], value)
	}
}

// readLine reads one line of a request head. Unlike bufio.Reader.ReadLine
// (under textproto), which hands back a line cut short by a timeout or
// EOF as if it were complete and reports the error on the next call, it
// returns the error: a client too slow to finish its head gets 408, and a
// truncated line is never taken for a whole one. Length is bounded by the
// head limit.
func readLine(br *bufio.Reader) (string, error) {
	var long []byte
	for {
		b, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			long = append(long, b...)
			continue
		}
		if err != nil {
			return "", err
		}
		if long != nil {
			b = append(long, b...)
		}
		b = b[:len(b)-1] // '\n'
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
		return string(b), nil
	}
}

// setBody applies RFC 9112 section 6.3 to a request.
func setBody(req *http.Request, br *bufio.Reader) error {
	te, hasTE := req.Header["Transfer-Encoding"]
	cl, hasCL := req.Header["Content-Length"]
	if hasTE {
		if hasCL {
			// Either may be a smuggling attempt; refuse rather than guess.
			return bad("both Transfer-Encoding and Content-Length")
		}
		if req.ProtoMinor == 0 {
			return bad("Transfer-Encoding in an HTTP/1.0 request")
		}
		if len(te) != 1 || !strings.EqualFold(strings.TrimSpace(te[0]), "chunked") {
			return &badRequest{http.StatusNotImplemented, "unsupported Transfer-Encoding " + quote(strings.Join(te, ", "))}
		}
		delete(req.Header, "Transfer-Encoding")
		req.TransferEncoding = []string{"chunked"}
		req.ContentLength = -1
		req.Body = &chunkedBody{r: httputil.NewChunkedReader(br), br: br}
		return nil
	}
	if !hasCL {
		req.Body = http.NoBody
		return nil
	}
	n := int64(-1)
	for _, v := range cl {
		// Identical repeats are allowed (RFC 9110 8.6), anything else is not.
		for _, f := range strings.Split(v, ",") {
			f = strings.TrimSpace(f)
			m, err := strconv.ParseUint(f, 10, 63)
			if err != nil || f == "" || f[0] == '+' {
				return bad("malformed Content-Length %s", quote(v))
			}
			if n >= 0 && int64(m) != n {
				return bad("conflicting Content-Length values")
			}
			n = int64(m)
		}
	}
	req.Header["Content-Length"] = []string{strconv.FormatInt(n, 10)}
	req.ContentLength = n
	if n == 0 {
		req.Body = http.NoBody
	} else {
		req.Body = &fixedBody{r: br, n: n}
	}
	return nil
}

// validMethod reports whether m is an RFC 9110 token.
func validMethod(m string) bool {
	for i := 0; i < len(m); i++ {
		if !httpguts.IsTokenRune(rune(m[i])) {
			return false
		}
	}
	return true
}

// shouldClose reports whether the client asked to close after this request.
func shouldClose(req *http.Request) bool {
	conn := req.Header["Connection"]
	if req.ProtoMinor == 0 {
		return !httpguts.HeaderValuesContainsToken(conn, "keep-alive")
	}
	return httpguts.HeaderValuesContainsToken(conn, "close")
}

// fixedBody reads exactly n bytes; an early EOF is io.ErrUnexpectedEOF.
type fixedBody struct {
	r    *bufio.Reader
	n    int64
	read int64
}

func (b *fixedBody) Read(p []byte) (int, error) {
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

func (b *fixedBody) Close() error { return nil }

// done reports whether the whole body has been read.
func (b *fixedBody) done() bool { return b.n <= 0 }

// chunkedBody decodes a chunked body and, at its end, reads the trailer
// section into trailer (when set).
type chunkedBody struct {
	r       io.Reader
	br      *bufio.Reader
	trailer http.Header
	read    int64
	eof     bool
	err     error
}

func (b *chunkedBody) Read(p []byte) (int, error) {
	if b.eof || b.err != nil {
		if b.err != nil {
			return 0, b.err
		}
		return 0, io.EOF
	}
	n, err := b.r.Read(p)
	b.read += int64(n)
	if err == io.EOF {
		tr, terr := readHeader(b.br)
		if terr != nil {
			b.err = fmt.Errorf("chunked trailer: %w", terr)
			return n, b.err
		}
		if b.trailer != nil {
			for k, v := range tr {
				b.trailer[k] = v
			}
		}
		b.eof = true
		return n, io.EOF
	}
	if err != nil {
		b.err = err
	}
	return n, err
}

func (b *chunkedBody) Close() error { return nil }

func (b *chunkedBody) done() bool { return b.eof }

// bodyDone reports whether a request's body was read to its end.
func bodyDone(body io.Reader) bool {
	switch b := body.(type) {
	case *fixedBody:
		return b.done()
	case *chunkedBody:
		return b.done()
	}
	return true // http.NoBody
}

// bodyRead returns how many body bytes have been read.
func bodyRead(body io.Reader) int64 {
	switch b := body.(type) {
	case *fixedBody:
		return b.read
	case *chunkedBody:
		return b.read
	}
	return 0
}

// quote keeps log and body lines one line long whatever the client sent.
func quote(s string) string {
	if len(s) > 256 {
		s = s[:256] + "..."
	}
	b := make([]byte, 0, len(s)+2)
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f && c != '"' && c != '\\' {
			b = append(b, c)
		} else {
			b = append(b, '\\', 'x', "0123456789abcdef"[c>>4], "0123456789abcdef"[c&15])
		}
	}
	return string(append(b, '"'))
}

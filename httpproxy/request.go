package httpproxy

import (
	"bufio"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Request heads are parsed here rather than by http.ReadRequest, which
// deletes the Host header before the caller can see whether it was
// missing or sent twice, folds obs-fold lines, accepts a space before a
// colon, and keeps fields only as a map. Field syntax follows RFC 9112
// section 5 and framing section 6: Transfer-Encoding must be exactly
// "chunked", it may not come with Content-Length, and Content-Length must
// be one decimal number.

// badRequest is a parse error answered with status and its message. The
// message never quotes a field value.
type badRequest struct {
	status int
	msg    string
}

func (e *badRequest) Error() string { return e.msg }

func bad(format string, args ...any) error {
	return &badRequest{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// request is one client request: its head as received and what rotor
// derived from it.
type request struct {
	method, target, proto string
	minor                 int // HTTP/1.minor
	fields                header

	// The target: for CONNECT and absolute-form, the host (an IPv6
	// literal without brackets) and port (defaulted from the scheme);
	// authority is host:port as the Host field must say it.
	scheme, host, port, authority string
	// path is the origin-form sent upstream: the target's path and query
	// as the client spelled them ("/" when it had none).
	path string

	// length is the body's Content-Length, -1 for chunked, 0 for none.
	length int64
	body   clientBody // nil when there is no body

	close     bool   // the client asked to close after this request
	keepAlive bool   // an HTTP/1.0 client asked to keep the connection
	expect100 bool   // Expect: 100-continue
	upgrade   string // "websocket" when a WebSocket upgrade was asked
	remote    string // the client's address, for logs
}

// hostport is the target as the dialer takes it.
func (r *request) hostport() string { return joinHostPort(r.host, r.port) }

func joinHostPort(host, port string) string {
	if strings.IndexByte(host, ':') >= 0 {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}

// readRequest reads one request head from br and sets up its body.
func readRequest(br *bufio.Reader, maxBytes int, buf *headBuf, lim bodyLimits) (*request, error) {
	start, fields, err := readHead(br, headLimits{maxBytes, maxHeaderFields}, buf)
	if err != nil {
		return nil, requestHeadError(err)
	}
	method, rest, ok1 := strings.Cut(start, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || method == "" || target == "" || !validMethod(method) {
		return nil, bad("malformed request line %s", quote(start))
	}
	major, minor, ok := http.ParseHTTPVersion(proto)
	if !ok {
		return nil, bad("malformed HTTP version %s", quote(proto))
	}
	if major != 1 {
		return nil, &badRequest{http.StatusHTTPVersionNotSupported, "HTTP version " + quote(proto) + " not supported"}
	}
	r := &request{method: method, target: target, proto: proto, minor: minor, fields: fields}
	if err := r.parseTarget(); err != nil {
		return nil, err
	}
	if err := r.checkHost(); err != nil {
		return nil, err
	}
	if minor == 0 {
		r.keepAlive = fields.hasToken("Connection", "keep-alive") || fields.hasToken("Proxy-Connection", "keep-alive")
		r.close = !r.keepAlive
	} else {
		r.close = fields.hasToken("Connection", "close") || fields.hasToken("Proxy-Connection", "close")
	}
	r.expect100 = fields.hasToken("Expect", "100-continue")
	if fields.hasToken("Upgrade", "websocket") && fields.hasToken("Connection", "upgrade") && method == http.MethodGet {
		r.upgrade = "websocket"
	}
	if err := r.setBody(br, lim, buf); err != nil {
		return nil, err
	}
	return r, nil
}

// requestHeadError maps a head-reading error to the client's status.
func requestHeadError(err error) error {
	switch e := err.(type) {
	case *fieldError:
		return &badRequest{http.StatusBadRequest, "invalid " + e.Error()}
	}
	if err == errTooManyFields {
		return &badRequest{http.StatusRequestHeaderFieldsTooLarge, "more than " + strconv.Itoa(maxHeaderFields) + " header fields"}
	}
	return err
}

// parseTarget reads the request-target: authority form for CONNECT,
// absolute form (http:// or https://) for forwarding, anything else is
// kept for the origin-form answer.
func (r *request) parseTarget() error {
	t := r.target
	if r.method == http.MethodConnect {
		// Authority form: host:port, nothing else.
		if strings.ContainsAny(t, "/?#@") {
			return bad("CONNECT target %s is not host:port", quote(t))
		}
		host, port, ok := splitAuthority(t)
		if !ok || port == "" {
			return bad("CONNECT needs host:port, got %s", quote(t))
		}
		r.host, r.port, r.authority = host, port, joinHostPort(host, port)
		return nil
	}
	if strings.ContainsAny(t, "#") || !validTarget(t) {
		return bad("malformed request target %s", quote(t))
	}
	i := strings.Index(t, "://")
	if i <= 0 || t[0] == '/' {
		if t[0] != '/' && t != "*" {
			return bad("malformed request target %s", quote(t))
		}
		return nil // origin form: answered with an explanation
	}
	r.scheme = strings.ToLower(t[:i])
	rest := t[i+3:]
	end := strings.IndexAny(rest, "/?")
	auth := rest
	r.path = "/"
	if end >= 0 {
		auth = rest[:end]
		if rest[end] == '/' {
			r.path = rest[end:]
		} else {
			r.path = "/" + rest[end:]
		}
	}
	if at := strings.LastIndexByte(auth, '@'); at >= 0 {
		// Credentials in a URL are deprecated (RFC 9110 4.2.4) and never
		// forwarded.
		auth = auth[at+1:]
	}
	host, port, ok := splitAuthority(auth)
	if !ok {
		return bad("malformed host in request target %s", quote(t))
	}
	r.host, r.port, r.authority = host, port, auth
	if strings.IndexByte(host, ':') >= 0 && auth[0] != '[' {
		r.authority = "[" + host + "]" // bare IPv6 in the target
		if port != "" {
			r.authority += ":" + port
		}
	}
	if port == "" {
		r.port = "80"
		if r.scheme == "https" {
			r.port = "443"
		}
	}
	return nil
}

// validTarget reports whether t holds only the bytes a request-target may
// (RFC 3986 characters, visible ASCII).
func validTarget(t string) bool {
	for i := 0; i < len(t); i++ {
		if c := t[i]; c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// splitAuthority splits host[:port]. An IPv6 literal may come bracketed
// or, as wget 1.21, Python 3.11's urllib and httpx 0.23 send it in
// CONNECT, bare: then the last colon separates the port when what stands
// before it parses as an IPv6 address. A name may hold letters, digits,
// '-', '.' and '_' only; a port is 1-65535.
func splitAuthority(a string) (host, port string, ok bool) {
	switch {
	case a == "":
		return "", "", false
	case a[0] == '[':
		end := strings.IndexByte(a, ']')
		if end < 0 {
			return "", "", false
		}
		host, rest := a[1:end], a[end+1:]
		if ip, err := netip.ParseAddr(host); err != nil || !ip.Is6() || ip.Zone() != "" {
			return "", "", false
		}
		if rest != "" {
			if rest[0] != ':' {
				return "", "", false
			}
			port = rest[1:]
		}
		return host, port, validPort(port, true)
	case strings.Count(a, ":") > 1:
		if i := strings.LastIndexByte(a, ':'); isIPv6(a[:i]) && validPort(a[i+1:], false) {
			return a[:i], a[i+1:], true
		}
		if isIPv6(a) {
			return a, "", true
		}
		return "", "", false
	}
	host, port, _ = strings.Cut(a, ":")
	if host == "" || !validPort(port, true) {
		return "", "", false
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return "", "", false
		}
	}
	return host, port, true
}

func isIPv6(s string) bool {
	ip, err := netip.ParseAddr(s)
	return err == nil && ip.Is6() && ip.Zone() == ""
}

// validPort: 1-65535 in decimal digits; empty when allowed.
func validPort(p string, emptyOK bool) bool {
	if p == "" {
		return emptyOK
	}
	if len(p) > 5 {
		return false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
		n = n*10 + int(p[i]-'0')
	}
	return n >= 1 && n <= 65535
}

// checkHost applies RFC 9112 section 3.2: exactly one valid Host field,
// which HTTP/1.0 may leave out. An absolute-form target's authority wins
// over it (section 3.2.2): forward writes the target's.
func (r *request) checkHost() error {
	switch n := r.fields.count("Host"); {
	case n > 1:
		return bad("more than one Host header")
	case n == 0 && r.minor >= 1 && r.method != http.MethodConnect:
		return bad("missing Host header")
	case n == 1:
		if v, _ := r.fields.get("Host"); !httpguts.ValidHostHeader(v) {
			return bad("malformed Host header")
		}
	}
	return nil
}

// setBody applies RFC 9112 section 6.3 to a request.
func (r *request) setBody(br *bufio.Reader, lim bodyLimits, buf *headBuf) error {
	te := r.fields.count("Transfer-Encoding")
	cls := r.fields.count("Content-Length")
	if te > 0 {
		if cls > 0 {
			// Either may be a smuggling attempt; refuse rather than guess.
			return bad("both Transfer-Encoding and Content-Length")
		}
		if r.minor == 0 {
			return bad("Transfer-Encoding in an HTTP/1.0 request")
		}
		v, _ := r.fields.get("Transfer-Encoding")
		if te != 1 || !strings.EqualFold(v, "chunked") {
			return &badRequest{http.StatusNotImplemented, "unsupported Transfer-Encoding"}
		}
		r.length = -1
		r.body = newChunkedReader(br, lim, buf)
		return nil
	}
	if cls == 0 {
		return nil
	}
	n, err := contentLength(r.fields)
	if err != nil {
		return bad("%s", err.Error())
	}
	r.length = n
	if n > 0 {
		r.body = &fixedReader{r: br, n: n}
	}
	return nil
}

// contentLength reads every Content-Length field: identical repeats are
// allowed (RFC 9110 8.6), anything else is not.
func contentLength(h header) (int64, error) {
	n := int64(-1)
	for _, f := range h {
		if !strings.EqualFold(f.name, "Content-Length") {
			continue
		}
		for _, v := range strings.Split(f.value, ",") {
			v = strings.TrimSpace(v)
			m, err := strconv.ParseUint(v, 10, 63)
			if err != nil || v == "" || v[0] == '+' {
				return 0, errBadLength
			}
			if n >= 0 && int64(m) != n {
				return 0, errConflictingLength
			}
			n = int64(m)
		}
	}
	return n, nil
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

// bodyIgnorable reports whether the request carries a body its method
// gives no meaning to. A lenient origin may ignore such a body and read it
// as the next request on the connection, so the connection is not reused.
func (r *request) bodyIgnorable() bool {
	if r.length == 0 {
		return false
	}
	switch r.method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodDelete, http.MethodTrace:
		return true
	}
	return false
}

// retrySafe reports whether the request may be sent again after a stale
// keep-alive connection failed it (RFC 9110 9.2.2): an idempotent method,
// or an Idempotency-Key the origin deduplicates by.
func (r *request) retrySafe() bool {
	switch r.method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	_, ok := r.fields.get("Idempotency-Key")
	return ok
}

// bodyDone reports whether the request body was read to its end.
func (r *request) bodyDone() bool { return r.body == nil || r.body.done() }

// bodyRead returns how many body bytes were read from the client.
func (r *request) bodyRead() int64 {
	if r.body == nil {
		return 0
	}
	return r.body.bytesRead()
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

package httpproxy

import (
	"bufio"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// response is an origin's response head and how its body is framed.
type response struct {
	status int
	reason string
	minor  int
	fields header

	noBody  bool  // HEAD, 1xx, 204 or 304: no body, whatever the fields say
	chunked bool  // Transfer-Encoding ends in chunked
	length  int64 // a valid Content-Length, unless chunked; -1: none
	// reusable is false when the framing leaves the connection in doubt:
	// the origin closes it, the body is delimited by the close, or both
	// Content-Length and Transfer-Encoding were sent.
	reusable bool
}

// originError is a response rotor refuses to forward: the origin broke
// the protocol. It is answered 502 and the connection is dropped.
type originError struct{ err error }

func (e *originError) Error() string { return "malformed response from origin: " + e.err.Error() }
func (e *originError) Unwrap() error { return e.err }

func badOrigin(format string, args ...any) error {
	return &originError{fmt.Errorf(format, args...)}
}

// readResponse reads one response head, bounded as request heads are, and
// decides its framing (RFC 9112 section 6.3) for a request of method.
func readResponse(br *bufio.Reader, maxBytes int, buf *headBuf, method string) (*response, error) {
	start, fields, err := readHead(br, headLimits{maxBytes, maxHeaderFields}, buf)
	if err != nil {
		if errors.Is(err, errHeadTooLarge) || errors.Is(err, errTooManyFields) || isFieldError(err) {
			return nil, &originError{err}
		}
		return nil, err
	}
	resp := &response{fields: fields, length: -1}
	if err := resp.parseStatusLine(start); err != nil {
		return nil, err
	}
	resp.reusable = !fields.hasToken("Connection", "close")
	if resp.minor == 0 && !fields.hasToken("Connection", "keep-alive") {
		resp.reusable = false
	}
	hasCL, hasTE := fields.count("Content-Length") > 0, fields.count("Transfer-Encoding") > 0
	var clErr error
	if hasCL {
		if resp.length, clErr = contentLength(fields); clErr != nil {
			resp.length = -1
		}
	}
	switch {
	case method == http.MethodHead || resp.status < 200 || resp.status == http.StatusNoContent || resp.status == http.StatusNotModified:
		resp.noBody = true
		if resp.status < 200 {
			resp.reusable = true // the final response decides
		}
		if clErr != nil || (hasCL || hasTE) && (resp.status == http.StatusNoContent || resp.status < 200) {
			// Framing fields on a status that cannot have a body: the
			// origin may follow with bytes that belong to nothing.
			resp.reusable = false
		}
		return resp, nil
	case hasTE:
		if resp.minor == 0 {
			return nil, badOrigin("Transfer-Encoding in an HTTP/1.0 response")
		}
		resp.length = -1
		if !lastCodingChunked(fields) {
			// Any other coding: the body runs to the close (RFC 9112
			// 6.3 item 4, response).
			resp.reusable = false
			return resp, nil
		}
		resp.chunked = true
		if hasCL {
			resp.reusable = false // a smuggling pattern: never reuse
		}
		return resp, nil
	case hasCL:
		if clErr != nil {
			return nil, &originError{clErr}
		}
		return resp, nil
	}
	resp.reusable = false // delimited by the close
	return resp, nil
}

// lastCodingChunked reports whether the last transfer coding of all
// Transfer-Encoding fields is chunked.
func lastCodingChunked(h header) bool {
	last := ""
	for _, f := range h {
		if strings.EqualFold(f.name, "Transfer-Encoding") {
			codings := strings.Split(f.value, ",")
			last = strings.TrimSpace(codings[len(codings)-1])
		}
	}
	return strings.EqualFold(last, "chunked")
}

// parseStatusLine reads "HTTP/1.x SSS reason". The reason phrase may be
// empty or missing but may not hold control bytes: it is forwarded as is.
func (resp *response) parseStatusLine(line string) error {
	proto, rest, ok := strings.Cut(line, " ")
	if !ok {
		return badOrigin("malformed status line")
	}
	major, minor, ok := http.ParseHTTPVersion(proto)
	if !ok || major != 1 {
		return badOrigin("unsupported version in status line")
	}
	code, reason, _ := strings.Cut(rest, " ")
	if len(code) != 3 || code[0] < '1' || code[0] > '5' || code[1] < '0' || code[1] > '9' || code[2] < '0' || code[2] > '9' {
		return badOrigin("malformed status code")
	}
	if !validFieldValue(reason) {
		return badOrigin("control byte in the reason phrase")
	}
	resp.status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	resp.reason, resp.minor = reason, minor
	return nil
}

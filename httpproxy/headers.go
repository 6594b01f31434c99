package httpproxy

import (
	"bufio"
	"strconv"
	"strings"
)

// fieldKind is what a field line means to a proxy; most are kindOther and
// pass through as received.
type fieldKind uint8

const (
	kindOther fieldKind = iota
	kindHost
	kindContentLength
	kindTransferEncoding
	kindTE
	kindConnection
	kindUpgrade
	kindExpect
	kindHop     // other hop-by-hop fields (RFC 9110 7.6.1), never forwarded
	kindSession // X-Rotor-Session: rotor's own, never forwarded
)

// kindOf classifies a field name without allocating.
func kindOf(name string) fieldKind {
	switch len(name) {
	case 2:
		if strings.EqualFold(name, "TE") {
			return kindTE
		}
	case 4:
		if strings.EqualFold(name, "Host") {
			return kindHost
		}
	case 6:
		if strings.EqualFold(name, "Expect") {
			return kindExpect
		}
	case 7:
		switch {
		case strings.EqualFold(name, "Upgrade"):
			return kindUpgrade
		case strings.EqualFold(name, "Trailer"):
			return kindHop
		}
	case 10:
		switch {
		case strings.EqualFold(name, "Connection"):
			return kindConnection
		case strings.EqualFold(name, "Keep-Alive"):
			return kindHop
		}
	case 14:
		if strings.EqualFold(name, "Content-Length") {
			return kindContentLength
		}
	case 15:
		if strings.EqualFold(name, "X-Rotor-Session") {
			return kindSession
		}
	case 16:
		if strings.EqualFold(name, "Proxy-Connection") {
			return kindHop
		}
	case 17:
		if strings.EqualFold(name, "Transfer-Encoding") {
			return kindTransferEncoding
		}
	case 18:
		if strings.EqualFold(name, "Proxy-Authenticate") {
			return kindHop
		}
	case 19:
		if strings.EqualFold(name, "Proxy-Authorization") {
			return kindHop
		}
	}
	return kindOther
}

// connectionTokens calls f for each token of h's Connection fields, until
// f returns true; it reports whether f did.
func connectionTokens(h header, f func(tok string) bool) bool {
	for _, fl := range h {
		if kindOf(fl.name) != kindConnection {
			continue
		}
		for v := fl.value; v != ""; {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			if tok = strings.Trim(tok, " \t"); tok != "" && f(tok) {
				return true
			}
		}
	}
	return false
}

// namedByConnection reports whether a Connection field of h lists name:
// such a field is hop-by-hop too (RFC 9110 7.6.1).
func namedByConnection(h header, name string) bool {
	return connectionTokens(h, func(tok string) bool { return strings.EqualFold(tok, name) })
}

// hasConnectionOptions reports whether any Connection field names more
// than close, keep-alive and upgrade, so that other fields must be
// checked against it.
func hasConnectionOptions(h header) bool {
	return connectionTokens(h, func(tok string) bool {
		return !strings.EqualFold(tok, "close") && !strings.EqualFold(tok, "keep-alive") && !strings.EqualFold(tok, "upgrade")
	})
}

// writeRequestHead writes the request as it goes to the origin: origin
// form, HTTP/1.1, and the client's field lines in its order and spelling
// less the hop-by-hop ones. Host says the target's authority (RFC 9112
// 3.2.2), in the Host line's place, or first when the client sent none.
// Framing fields are written as rotor frames the body: Content-Length
// once, or Transfer-Encoding: chunked.
// proxyHop is an HTTP upstream proxy entry a request is sent to in
// absolute form: auth is rotor's Proxy-Authorization for it ("" for none).
type proxyHop struct{ auth string }

func writeRequestHead(w *bufio.Writer, r *request, hop *proxyHop) {
	w.WriteString(r.method)
	w.WriteByte(' ')
	if hop != nil {
		// To an upstream proxy: the absolute form, as the client sent it.
		w.WriteString(r.scheme)
		w.WriteString("://")
		w.WriteString(r.authority)
	}
	w.WriteString(r.path)
	w.WriteString(" HTTP/1.1\r\n")
	if r.fields.count("Host") == 0 {
		writeField(w, "Host", r.authority)
	}
	if hop != nil && hop.auth != "" {
		// rotor's credentials for the upstream; the client's own
		// Proxy-Authorization is hop-by-hop and never forwarded.
		writeField(w, "Proxy-Authorization", hop.auth)
	}
	named := hasConnectionOptions(r.fields)
	wroteLength, wroteConnection := false, false
	for _, f := range r.fields {
		switch kindOf(f.name) {
		case kindHost:
			writeField(w, f.name, r.authority)
		case kindContentLength:
			if !wroteLength {
				writeLength(w, f.name, r.length)
				wroteLength = true
			}
		case kindTransferEncoding:
			writeField(w, f.name, "chunked")
		case kindTE:
			// Only "trailers" means anything end to end.
			if r.fields.hasToken("TE", "trailers") {
				writeField(w, f.name, "trailers")
			}
		case kindConnection:
			if r.upgrade != "" && !wroteConnection {
				writeField(w, f.name, "Upgrade")
				wroteConnection = true
			}
		case kindUpgrade:
			if r.upgrade != "" {
				writeField(w, f.name, f.value)
			}
		case kindExpect:
			// rotor answers 100-continue itself (see forward).
			if !strings.EqualFold(f.value, "100-continue") {
				writeField(w, f.name, f.value)
			}
		case kindHop, kindSession:
		default:
			if !named || !namedByConnection(r.fields, f.name) {
				writeField(w, f.name, f.value)
			}
		}
	}
	w.WriteString("\r\n")
}

// responseFraming is how rotor frames a response for its client.
type responseFraming struct {
	length    bool // forward the origin's Content-Length (length-framed, or no body)
	chunked   bool // send chunked; Transfer-Encoding in the origin's line or added
	upgrade   bool // a 101: Upgrade and Connection: Upgrade pass
	close     bool // Connection: close, then close
	keepAlive bool // Connection: keep-alive, for an HTTP/1.0 client
}

// writeResponseHead writes the origin's status line and field lines in
// their order and spelling, less the hop-by-hop ones, framed for the
// client as fr says.
func writeResponseHead(w *bufio.Writer, resp *response, fr responseFraming) {
	var b [3]byte
	w.WriteString("HTTP/1.1 ")
	w.Write(strconv.AppendInt(b[:0], int64(resp.status), 10))
	w.WriteByte(' ')
	w.WriteString(resp.reason)
	w.WriteString("\r\n")
	named := hasConnectionOptions(resp.fields)
	wroteLength, wroteTE := false, false
	for _, f := range resp.fields {
		switch kindOf(f.name) {
		case kindContentLength:
			if fr.length && resp.length >= 0 && !wroteLength {
				writeLength(w, f.name, resp.length)
				wroteLength = true
			}
		case kindTransferEncoding:
			if fr.chunked && !wroteTE {
				writeField(w, f.name, "chunked")
				wroteTE = true
			}
		case kindConnection:
			if fr.upgrade {
				writeField(w, f.name, "Upgrade")
			}
		case kindUpgrade:
			if fr.upgrade {
				writeField(w, f.name, f.value)
			}
		case kindTE, kindHop:
		default:
			if !named || !namedByConnection(resp.fields, f.name) {
				writeField(w, f.name, f.value)
			}
		}
	}
	if fr.chunked && !wroteTE {
		w.WriteString("Transfer-Encoding: chunked\r\n")
	}
	switch {
	case fr.close:
		w.WriteString("Connection: close\r\n")
	case fr.keepAlive:
		w.WriteString("Connection: keep-alive\r\n")
	}
	w.WriteString("\r\n")
}

// writeLength writes a Content-Length line in the sender's spelling of
// the name, with the one value rotor frames by.
func writeLength(w *bufio.Writer, name string, n int64) {
	var b [20]byte
	w.WriteString(name)
	w.WriteString(": ")
	w.Write(strconv.AppendInt(b[:0], n, 10))
	w.WriteString("\r\n")
}

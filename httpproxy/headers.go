package httpproxy

import (
	"net/http"
	"net/textproto"
	"strings"
)

// hopHeaders are never forwarded (RFC 9110 7.6.1), besides the fields
// Connection names. Transfer-Encoding and Content-Length are re-framed,
// not copied.
var hopHeaders = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopByHop deletes hop-by-hop fields from h in place.
func removeHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

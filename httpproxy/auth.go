package httpproxy

import (
	"encoding/base64"
	"net/http"
	"strings"
)

// parseBasic decodes "Basic base64(user:pass)"; the scheme is
// case-insensitive (RFC 9110 section 11.1).
func parseBasic(h string) (user, pass string, ok bool) {
	const prefix = "basic "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(h[len(prefix):]))
	if err != nil {
		return "", "", false
	}
	user, pass, ok = strings.Cut(string(raw), ":")
	if !ok {
		return "", "", false
	}
	return user, pass, true
}

// authorize checks Proxy-Authorization: Basic. It returns the user name.
func (s *Server) authorize(r *http.Request) (string, bool) {
	if s.opts.Credentials == nil {
		return "", true
	}
	user, pass, ok := parseBasic(r.Header.Get("Proxy-Authorization"))
	if !ok || !s.opts.Credentials.Check([]byte(user), []byte(pass)) {
		return "", false
	}
	return user, true
}

package httpproxy

import (
	"encoding/base64"
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

package httpproxy

import (
	"encoding/base64"
	"net/http"
	"strings"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/pool"
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

// authorize checks Proxy-Authorization: Basic, whose user name may carry
// session parameters (config.ParseUser); a client that cannot change its
// user name may send X-Rotor-Session: KEY instead, which is removed here
// so that it never reaches the origin. It returns the user name and the
// session; err says why a session parameter was refused.
func (s *Server) authorize(r *http.Request) (user string, sess pool.Session, ok bool, err error) {
	header := r.Header.Get("X-Rotor-Session")
	delete(r.Header, "X-Rotor-Session")
	name, pass, has := parseBasic(r.Header.Get("Proxy-Authorization"))
	if has {
		if user, sess, err = config.ParseUser(name); err != nil {
			return "", pool.Session{}, false, err
		}
	}
	if s.opts.Credentials != nil && (!has || !s.opts.Credentials.Check([]byte(user), []byte(pass))) {
		return "", pool.Session{}, false, nil
	}
	if sess.Key == "" && header != "" {
		if sess, err = config.ParseSessionKey(header); err != nil {
			return "", pool.Session{}, false, err
		}
	}
	return user, sess, true, nil
}

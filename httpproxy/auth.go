package httpproxy

import (
	"encoding/base64"
	"errors"
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/rotor-proxy/rotor/auth"
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
	if !utf8.Valid(raw) {
		// Not UTF-8: python-requests and others encode a non-ASCII name
		// or password as ISO-8859-1 (RFC 7617 leaves the charset open),
		// whose bytes are the first 256 code points.
		raw = latin1ToUTF8(raw)
	}
	user, pass, ok = strings.Cut(string(raw), ":")
	if !ok {
		return "", "", false
	}
	return user, pass, true
}

func latin1ToUTF8(b []byte) []byte {
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = utf8.AppendRune(out, rune(c))
	}
	return out
}

// errCertUser refuses a verified client certificate whose common name is
// none of the configured users.
var errCertUser = errors.New("the client certificate's common name is not a configured user")

// identity is who a request comes from, as far as rotor knows: a user
// name verified against the configured users, or a name that nobody
// checked (no users are configured: an open proxy, or --allow-clients
// alone). An unverified name is logged as "unverified_user", never
// "user", and keys nothing a user owns: its idle upstream connections
// are the client address's. Its session parameters are honoured, since
// they only pick an address from a pool the client may use anyway.
type identity struct {
	name     string
	verified bool
}

// authorize checks Proxy-Authorization: Basic, whose user name may carry
// session parameters (auth.SplitSession); a client that cannot change its
// user name may send X-Rotor-Session: KEY instead, which is never forwarded (see
// writeRequestHead). A client from an --allow-clients
// network needs no credentials (any it sends are still checked against
// the users, if there are any). It returns the user (nil when none), who
// sent the request, and the session
// with the pool the request may leave from; err says why a session
// parameter was refused.
//
// A connection with a verified client certificate (cert, its common
// name) is that user without a password: Proxy-Authorization is not
// checked, but a user name in it that is cert's with session parameters
// gives the session. With users configured, cert must name one of them.
func (s *Server) authorize(r *request, client netip.Addr, cert string) (usr *auth.User, who identity, sess pool.Session, ok bool, err error) {
	header, _ := r.fields.get("X-Rotor-Session")
	var st *auth.State
	if s.opts.Access != nil {
		st = s.opts.Access.Load()
	}
	creds, _ := r.fields.get("Proxy-Authorization")
	basic, pass, has := parseBasic(creds)
	if has {
		if who.name, sess, err = auth.SplitSession(basic); err != nil {
			return nil, identity{}, pool.Session{}, false, err
		}
	}
	switch {
	case cert != "":
		if who.name != cert {
			sess = pool.Session{}
		}
		who = identity{name: cert, verified: true}
		if st != nil && st.Users != nil {
			if usr = st.Users.Lookup(cert); usr == nil {
				return nil, identity{}, pool.Session{}, false, errCertUser
			}
		}
	case st == nil:
	case has && st.Users != nil:
		if usr, err = s.opts.Access.Check(st, client, []byte(who.name), []byte(pass)); err != nil {
			return nil, identity{}, pool.Session{}, false, err
		}
		who.verified = true
	case s.opts.Access.Trusted(client):
		// No users to check a name against: it stays unverified.
	case st.Users == nil && !s.opts.Access.HasAllowlist():
		// No credentials configured at all: an open proxy (on loopback,
		// or --allow-open).
	default:
		return nil, identity{}, pool.Session{}, false, nil
	}
	if sess.Key == "" && header != "" {
		if sess, err = auth.ParseSessionKey(header); err != nil {
			return nil, identity{}, pool.Session{}, false, err
		}
	}
	sess.Pool = st.PoolFor(usr)
	return usr, who, sess, true, nil
}

// Package auth decides who may use rotor and from which addresses: the
// users (from a users file and/or PROXY_USER), their pools and limits,
// the client networks that need no credentials, and the live snapshot of
// all that (with the pool) that SIGHUP replaces in one atomic swap.
//
//	users file ─ParseUsers─▶ []UserSpec ─Build(pool, tags)─▶ *Users ─┐
//	pool file / --pool ─▶ *pool.Pool ──────────────────────────────────┴─▶ State ─▶ Live (atomic)
//
// Listeners load the State once per request or connection; a reload never
// touches a request or tunnel already running. In the path of one CONNECT
// or SOCKS5 request this is the step after the head or greeting is read:
// Live.Check verifies the credentials (under the Guard's back-off and
// fair bcrypt turns), SplitSession reads the name's session parameters,
// User.Admit applies the user's limits, and the user's pool goes to the
// dialer with the session.
package auth

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"

	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
)

// secretKind is how a user's password is stored.
type secretKind uint8

const (
	secretSHA256 secretKind = iota // {SHA256}: digest; PROXY_PASS and {PLAIN} are kept as digests too
	secretBcrypt                   // $2a$, $2b$, $2y$
)

// UserSpec is one user as written: its secret and settings, before its
// pool is resolved against a pool.
type UserSpec struct {
	Line     int // in the users file; 0 for PROXY_USER
	Name     string
	kind     secretKind
	secret   []byte   // bcrypt hash, or SHA-256 digest
	PoolRefs []string // pool entries or pool-file tags; empty: the whole pool
	MaxConns int64    // concurrent requests and tunnels; 0: no cap
	Rate     float64  // requests and connections per second; 0: no cap
	Burst    int
}

// String never shows the secret: a spec may end up in a log field.
func (s UserSpec) String() string { return "user " + strconv.Quote(s.Name) }

// PlainUser is the PROXY_USER/PROXY_PASS shortcut: one user, no limits.
func PlainUser(name, pass string) UserSpec {
	d := sha256.Sum256([]byte(pass))
	return UserSpec{Name: name, kind: secretSHA256, secret: d[:]}
}

// ParseUsers reads a users file: one user per line, htpasswd-compatible
//
//	name:$2y$10$...                 bcrypt (htpasswd -B, rotor passwd)
//	name:{SHA256}BASE64-OR-HEX      SHA-256 of the password
//	name:{PLAIN}password            plain text, only with this prefix
//
// optionally followed, after white space, by settings:
//
//	pool=TAG|ENTRY[,...]   addresses the user's requests may leave from:
//	                       pool entries (203.0.113.7, 2001:db8:1::/64) or
//	                       tags from the pool file; default the whole pool
//	max-conns=N            concurrent requests and tunnels
//	rate=N[/s]             requests and connections per second (burst=N)
//
// Blank lines and lines starting with # are ignored. Errors name the line.
func ParseUsers(r io.Reader) ([]UserSpec, error) {
	var out []UserSpec
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseUserLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		s.Line = n
		if prev, ok := seen[s.Name]; ok {
			return nil, fmt.Errorf("line %d: user %q already defined on line %d", n, s.Name, prev)
		}
		seen[s.Name] = n
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("no users")
	}
	return out, nil
}

func parseUserLine(line string) (UserSpec, error) {
	fields := strings.Fields(line)
	name, secret, ok := strings.Cut(fields[0], ":")
	var s UserSpec
	if !ok || name == "" {
		return s, errors.New("want name:secret")
	}
	if err := ValidName(name); err != nil {
		return s, err
	}
	s.Name = name
	switch {
	case strings.HasPrefix(secret, "$2a$") || strings.HasPrefix(secret, "$2b$") || strings.HasPrefix(secret, "$2y$"):
		cost, err := bcrypt.Cost([]byte(secret))
		if err != nil {
			return s, fmt.Errorf("user %q: bad bcrypt hash: %w", name, err)
		}
		if cost > MaxBcryptCost {
			return s, fmt.Errorf("user %q: bcrypt cost %d: want at most %d (each step doubles the time of every check; rotor passwd --cost)", name, cost, MaxBcryptCost)
		}
		s.kind, s.secret = secretBcrypt, []byte(secret)
	case strings.HasPrefix(secret, "{SHA256}"):
		v := secret[len("{SHA256}"):]
		d, err := base64.StdEncoding.DecodeString(v)
		if err != nil || len(d) != sha256.Size {
			if d, err = hex.DecodeString(v); err != nil || len(d) != sha256.Size {
				return s, fmt.Errorf("user %q: {SHA256} wants the base64 or hex of a 32-byte digest", name)
			}
		}
		s.kind, s.secret = secretSHA256, d
	case strings.HasPrefix(secret, "{PLAIN}"):
		p := secret[len("{PLAIN}"):]
		if p == "" {
			return s, fmt.Errorf("user %q: empty password", name)
		}
		d := sha256.Sum256([]byte(p))
		s.kind, s.secret = secretSHA256, d[:]
	case strings.HasPrefix(secret, "{SHA}") || strings.HasPrefix(secret, "$apr1$") || strings.HasPrefix(secret, "$1$"):
		return s, fmt.Errorf("user %q: SHA-1 and MD5 hashes are not accepted: use bcrypt (rotor passwd %s)", name, name)
	default:
		return s, fmt.Errorf("user %q: unknown password format (want $2y$ bcrypt, {SHA256} or {PLAIN})", name)
	}
	// A setting that does not parse is named by its position, never its
	// text: with white space in a {PLAIN} password, that text would be
	// part of the password, and errors go to the log.
	for i, f := range fields[1:] {
		k, v, ok := strings.Cut(f, "=")
		if !ok || v == "" {
			return s, fmt.Errorf("user %q: setting %d after the password is not key=value (a {PLAIN} password cannot contain white space)", name, i+1)
		}
		switch k {
		case "pool":
			for _, ref := range strings.Split(v, ",") {
				if ref = strings.TrimSpace(ref); ref != "" {
					s.PoolRefs = append(s.PoolRefs, ref)
				}
			}
		case "max-conns":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 1 {
				return s, fmt.Errorf("user %q: max-conns: want a positive integer", name)
			}
			s.MaxConns = n
		case "rate":
			r, err := strconv.ParseFloat(strings.TrimSuffix(v, "/s"), 64)
			if err != nil || r <= 0 {
				return s, fmt.Errorf("user %q: rate: want requests per second, e.g. 20/s", name)
			}
			s.Rate = r
		case "burst":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return s, fmt.Errorf("user %q: burst: want a positive integer", name)
			}
			s.Burst = n
		default:
			return s, fmt.Errorf("user %q: setting %d after the password is unknown (want pool, max-conns, rate or burst)", name, i+1)
		}
	}
	if s.Burst > 0 && s.Rate == 0 {
		return s, fmt.Errorf("user %q: burst without rate", name)
	}
	return s, nil
}

// ValidName checks a user name: what SOCKS5 and HTTP Basic can carry.
func ValidName(name string) error {
	switch {
	case name == "" || len(name) > 255:
		return fmt.Errorf("user %q: a user name must be 1-255 bytes (SOCKS5 limit)", name)
	case strings.ContainsAny(name, ": \t"):
		return fmt.Errorf("user %q: a user name cannot contain ':' or white space", name)
	case strings.Contains(name, "-session-"):
		return fmt.Errorf("user %q: '-session-' starts session parameters and cannot be part of a user name", name)
	}
	return nil
}

// User is a configured user with its pool and limits resolved.
type User struct {
	Name     string
	kind     secretKind
	secret   []byte
	Pool     *pool.Pool // nil: the whole pool
	maxConns int64
	conns    atomic.Int64
	limiter  *rate.Limiter
}

// Users is an immutable set of users and a cache of verified bcrypt
// credentials, which a reload drops with the set.
type Users struct {
	byName map[string]*User
	cache  *verified
	// dummy is a bcrypt hash at the highest cost any user has, checked
	// for unknown names, so that a wrong name takes as long as a wrong
	// password and answer times do not tell which names exist. nil when
	// no user has a bcrypt hash.
	dummy []byte
	// prev is the set this one replaced at a reload (see Follows).
	prev *generation
}

// generation is what a Users keeps of the set it replaced: enough to tell
// a password that was right before the reload, and nothing of older ones.
type generation struct {
	byName map[string]*User
	cache  *verified
}

// Follows records that u replaces old at a reload, before u is published.
// A client still sending a password that old accepted and that has changed
// since is refused without a bcrypt run, and its failure does not count
// toward its address's back-off: it is a client not yet told, not a
// guesser (who would have to know the old password).
func (u *Users) Follows(old *Users) {
	if old != nil {
		u.prev = &generation{byName: old.byName, cache: old.cache}
	}
}

// stale reports whether pass was usr's password before the last reload
// and no longer is: right in the previous set (known without bcrypt: a
// cached verification, or a SHA-256 digest), with a different secret now.
func (u *Users) stale(name, pass []byte, usr *User) bool {
	if u.prev == nil {
		return false
	}
	old := u.prev.byName[string(name)]
	if old == nil || subtle.ConstantTimeCompare(old.secret, usr.secret) == 1 {
		return false
	}
	if old.kind == secretBcrypt {
		return u.prev.cache.has(credentialKey(name, pass), old)
	}
	d := sha256.Sum256(pass)
	return subtle.ConstantTimeCompare(d[:], old.secret) == 1
}

// Build resolves each spec's pool against p: a reference is a tag of the
// pool file (tags) or an entry of p. The error names the users file line.
func Build(specs []UserSpec, p *pool.Pool, tags map[string][]netip.Prefix) (*Users, error) {
	u := &Users{byName: make(map[string]*User, len(specs)), cache: newVerified(verifiedMax)}
	for _, s := range specs {
		if _, dup := u.byName[s.Name]; dup {
			return nil, fmt.Errorf("%s is defined twice (users file and PROXY_USER?)", s)
		}
		usr := &User{Name: s.Name, kind: s.kind, secret: s.secret, maxConns: s.MaxConns}
		if s.Rate > 0 {
			burst := s.Burst
			if burst == 0 {
				burst = max(1, int(s.Rate))
			}
			usr.limiter = rate.NewLimiter(rate.Limit(s.Rate), burst)
		}
		if len(s.PoolRefs) > 0 {
			sub, err := subPool(p, s.PoolRefs, tags)
			if err != nil {
				if s.Line > 0 {
					return nil, fmt.Errorf("line %d: %s: %w", s.Line, s, err)
				}
				return nil, fmt.Errorf("%s: %w", s, err)
			}
			usr.Pool = sub
		}
		u.byName[s.Name] = usr
	}
	cost := 0
	for _, s := range specs {
		if s.kind == secretBcrypt {
			c, _ := bcrypt.Cost(s.secret)
			cost = max(cost, c)
		}
	}
	if cost > 0 {
		u.dummy = dummyHash(cost)
	}
	return u, nil
}

// MaxBcryptCost bounds the cost a users file may use. A check at cost 10
// takes about 75 ms on a small server and each step doubles it: at 16 it
// is several seconds, and a cost of 30 (valid bcrypt) would hold a core
// for most of a day on every wrong password.
const MaxBcryptCost = 16

// dummyHash is a well-formed bcrypt hash at cost that no password
// matches. A comparison against it runs the whole key schedule at that
// cost before it fails, which is all an unknown name needs; building it
// costs nothing, unlike generating one, which would put a full bcrypt run
// into every start-up and reload.
func dummyHash(cost int) []byte {
	const tail = "$8Kv/tUyNAjXMmKj5qcnO7etQ1lVcPKH3PLTx7K2M4FVVv9geO2O2." // salt and digest of an unrelated hash
	return fmt.Appendf(nil, "$2a$%02d%s", cost, tail)
}

// subPool is the part of p that refs name.
func subPool(p *pool.Pool, refs []string, tags map[string][]netip.Prefix) (*pool.Pool, error) {
	if p == nil {
		return nil, errors.New("pool= needs a pool to choose from")
	}
	byPrefix := map[netip.Prefix]*pool.Source{}
	for _, s := range p.Sources() {
		byPrefix[s.Prefix] = s
	}
	var picked []*pool.Source
	have := map[*pool.Source]bool{}
	add := func(pr netip.Prefix, ref string) error {
		s := byPrefix[pr]
		if s == nil {
			return fmt.Errorf("pool %q: %s is not an entry of the pool", ref, pr)
		}
		if !have[s] {
			have[s] = true
			picked = append(picked, s)
		}
		return nil
	}
	for _, ref := range refs {
		entries, isTag := tags[ref]
		for _, s := range p.Sources() {
			// Upstream entries carry their own tags (pool.Upstream.Tags).
			if s.Up != nil && slices.Contains(s.Up.Tags, ref) && !have[s] {
				isTag = true
				have[s] = true
				picked = append(picked, s)
			}
		}
		if isTag {
			for _, e := range entries {
				if err := add(e, ref); err != nil {
					return nil, err
				}
			}
			continue
		}
		pr, err := netip.ParsePrefix(ref)
		if err != nil {
			a, aerr := netip.ParseAddr(ref)
			if aerr != nil {
				return nil, fmt.Errorf("pool %q is neither a tag of the pool file nor an address or block", ref)
			}
			pr = pool.Single(a)
		}
		if err := add(pr, ref); err != nil {
			return nil, err
		}
	}
	return p.Subset(picked)
}

// Lookup is the user named name, or nil; nil Users has none. It checks
// no password: for a name vouched for otherwise (a verified client
// certificate).
func (u *Users) Lookup(name string) *User {
	if u == nil {
		return nil
	}
	return u.byName[name]
}

// Len is the number of users.
func (u *Users) Len() int { return len(u.byName) }

// errBadCredentials is every failed check: which part was wrong is not
// told to the client, nor logged with the password. errStale is one
// whose password was right before the last reload (see Follows).
var (
	errBadCredentials = errors.New("wrong user name or password")
	errStale          = fmt.Errorf("%w: the password was changed at the last reload", errBadCredentials)
)

// Check verifies name and pass from a client address. A bcrypt user's
// verified credentials are cached (by a hash of both), so a keep-alive
// client or a new tunnel does not pay bcrypt each time; a failure is
// never cached. The comparison of a SHA-256 secret runs in constant time.
// An unknown name costs what a wrong password costs: a bcrypt check at
// the highest cost in use, or a SHA-256 comparison when no user has a
// bcrypt hash. g (nil: none) refuses a client address that failed too
// often with a *BackoffError, before any check, and gives bcrypt work its
// turn fairly between client addresses.
func (u *Users) Check(g *Guard, client netip.Addr, name, pass []byte) (*User, error) {
	if err := g.backingOff(client); err != nil {
		return nil, err
	}
	usr, counted, err := u.check(g, client, name, pass)
	if !counted && errors.Is(err, errBadCredentials) && !errors.Is(err, errStale) {
		g.failed(client)
	}
	return usr, err
}

// check verifies the credentials; counted reports that a failure was
// already recorded against client (a bcrypt failure is, before its turn
// passes to the next waiter, so that the waiter sees the back-off).
func (u *Users) check(g *Guard, client netip.Addr, name, pass []byte) (usr *User, counted bool, err error) {
	usr = u.byName[string(name)]
	if usr == nil {
		if u.dummy != nil {
			if err := g.bcryptCompare(client, u.dummy, pass); errors.Is(err, ErrBackoff) {
				return nil, false, err
			}
			return nil, g != nil, errBadCredentials
		} else {
			d := sha256.Sum256(pass)
			subtle.ConstantTimeCompare(d[:], dummyDigest[:])
		}
		return nil, false, errBadCredentials
	}
	switch usr.kind {
	case secretBcrypt:
		key := credentialKey(name, pass)
		if u.cache.has(key, usr) {
			return usr, false, nil
		}
		if u.stale(name, pass, usr) {
			return nil, false, errStale
		}
		if err := g.bcryptCompare(client, usr.secret, pass); err != nil {
			if errors.Is(err, ErrBackoff) {
				return nil, false, err
			}
			return nil, g != nil, errBadCredentials
		}
		u.cache.add(key, usr)
		return usr, false, nil
	default:
		d := sha256.Sum256(pass)
		if subtle.ConstantTimeCompare(d[:], usr.secret) != 1 {
			if u.stale(name, pass, usr) {
				return nil, false, errStale
			}
			return nil, false, errBadCredentials
		}
		return usr, false, nil
	}
}

var dummyDigest = sha256.Sum256([]byte("rotor: no such user"))

// Admit applies the user's limits to one request or connection: ok false
// means refuse it (429 / SOCKS5 0x01), with which limit in why. When ok,
// done must be called when the request or tunnel ends.
func (usr *User) Admit() (done func(), why serve.Hit, ok bool) {
	if usr == nil {
		return noop, serve.None, true
	}
	if usr.limiter != nil && !usr.limiter.Allow() {
		return nil, serve.UserRate, false
	}
	if usr.maxConns > 0 {
		if usr.conns.Add(1) > usr.maxConns {
			usr.conns.Add(-1)
			return nil, serve.UserMaxConns, false
		}
		return usr.release, serve.None, true
	}
	return noop, serve.None, true
}

func (usr *User) release() { usr.conns.Add(-1) }

func noop() {}

// Package config builds rotor's configuration once, from flags with
// environment fallbacks, and validates it. Errors name the bad value; the
// caller exits with status 2 on any of them. It is not in a request's
// path: cmd/rotor passes what it built to the listeners, the pool and
// auth at start-up (and re-reads the pool and users files on SIGHUP).
package config

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/pflag"

	"github.com/rotor-proxy/rotor/auth"
	"github.com/rotor-proxy/rotor/httpproxy"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/pool/health"
	"github.com/rotor-proxy/rotor/socks"
)

// Config is rotor's whole configuration. It is built by Parse and not
// changed afterwards.
type Config struct {
	// Pool entries: single addresses (a /32 or /128 prefix) and blocks,
	// from which each connection takes a random address; and upstream
	// proxies, after them in the rotation.
	Pool      []netip.Prefix
	Upstreams []*pool.Upstream
	Strategy  pool.Strategy
	// Prefer is the family tried first for a host name with answers in
	// both, when the pool has both (the other follows 300 ms later or at
	// once on failure).
	Prefer pool.Family

	HTTPListen  string // empty: HTTP proxy disabled
	SOCKSListen string // empty: SOCKS5 proxy disabled
	HTTPSListen string // HTTP proxy inside TLS; empty: disabled
	MixedListen string // SOCKS5, HTTP and HTTPS by the first byte; empty: disabled
	AllowOpen   bool   // allow a non-loopback listener without credentials

	// TLSCert and TLSKey are PEM files served by the HTTPS listener and
	// the mixed port's TLS side; TLSClientCA, when set, requires client
	// certificates it signed. All three are read at start and on SIGHUP.
	TLSCert, TLSKey, TLSClientCA string

	// Shortcut is the PROXY_USER/PROXY_PASS user; nil when not set.
	Shortcut *auth.UserSpec
	// UsersFile holds users (htpasswd-compatible, see auth.ParseUsers);
	// read at start and on SIGHUP. Empty: only Shortcut, if any.
	UsersFile string
	// PoolFile holds the pool, one entry per line with optional tags,
	// instead of Pool; read at start and on SIGHUP.
	PoolFile string
	// PoolTags names groups of entries (from PoolFile) for users' pools.
	PoolTags map[string][]netip.Prefix
	// Users are Shortcut and the users file's, as read at start.
	Users []auth.UserSpec
	// AllowClients are networks whose clients need no credentials.
	AllowClients []netip.Prefix
	// ProxyProtocolFrom are the load balancers whose connections carry a
	// PROXY protocol header with the client's address.
	ProxyProtocolFrom []netip.Prefix

	// PerIPRate caps how often one source address (or block) is used, per
	// second; 0: no cap. PerIPBurst is the bucket size; PerIPWait how
	// long a request waits for a token before 429 / SOCKS5 0x01.
	PerIPRate  float64
	PerIPBurst int
	PerIPWait  time.Duration

	// AllowDest opens exceptions in the destination policy, which
	// otherwise refuses loopback, private, link-local and similar ranges.
	AllowDest []netip.Prefix

	DialTimeout      time.Duration
	DNSTimeout       time.Duration
	KeepAliveTimeout time.Duration // idle keep-alive HTTP client
	// MaxConns caps client connections across both listeners; derived
	// from the descriptor limit unless given.
	MaxConns         int64
	MaxHeaderBytes   int           // HTTP request head; larger gets 431
	HandshakeTimeout time.Duration // SOCKS5 greeting, auth and request
	HeaderTimeout    time.Duration // HTTP request head
	IdleTimeout      time.Duration // tunnel with no bytes either way
	UDPIdleTimeout   time.Duration // UDP association with no datagram either way
	ShutdownTimeout  time.Duration

	// Health: probe HealthTarget from every source each HealthInterval;
	// HealthFall failures take a source out, HealthRise successes bring
	// it back. Without a target, only addresses that could not be bound
	// are re-checked, each interval.
	HealthTarget   string
	HealthInterval time.Duration
	HealthTimeout  time.Duration // one probe; zero: the smaller of the interval and 10s
	HealthFall     int
	HealthRise     int

	// MetricsListen serves /metrics, /healthz and /readyz; empty disables.
	MetricsListen string

	// DebugListen serves net/http/pprof (goroutine counts, profiles) on a
	// loopback address; empty disables.
	DebugListen string

	LogLevel  zerolog.Level
	LogFormat string // "json" or "console"

	ShowVersion bool
}

// Defaults.
const (
	DefaultHTTPListen       = "127.0.0.1:7777"
	DefaultSOCKSListen      = "127.0.0.1:1080"
	DefaultDialTimeout      = 10 * time.Second
	DefaultDNSTimeout       = 5 * time.Second
	DefaultKeepAliveTimeout = 2 * time.Minute
	DefaultMaxHeaderBytes   = httpproxy.DefaultMaxHeaderBytes
	DefaultHandshakeTimeout = socks.DefaultHandshakeTimeout
	DefaultHeaderTimeout    = httpproxy.DefaultHeaderTimeout
	DefaultShutdownTimeout  = 10 * time.Second
	DefaultIdleTimeout      = 10 * time.Minute
)

// Parse builds a Config from args, falling back to getenv for flags that
// were not given. Precedence: flags, then environment, then defaults.
// pflag.ErrHelp is returned as is for -h/--help.
func Parse(args []string, getenv func(string) string) (Config, error) {
	fs := NewFlagSet("rotor")
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for flag, env := range envNames(fs) {
		if fs.Changed(flag) {
			continue
		}
		if v, ok := lookup(getenv, env); ok {
			if err := fs.Set(flag, v); err != nil {
				return Config{}, fmt.Errorf("%s=%q: %w", env, v, err)
			}
		}
	}
	f := flagValues{fs}
	var c Config
	if c.ShowVersion, _ = fs.GetBool("version"); c.ShowVersion {
		return c, nil
	}
	// In this order: the listener check needs the users and allowlist.
	for _, step := range []func(*Config, flagValues) error{
		parsePoolAndPolicy, parseTimeouts, parseUsers, parseRateLimit, parseListeners, parseHealth, parseObservability,
	} {
		if err := step(&c, f); err != nil {
			return Config{}, err
		}
	}
	return c, nil
}

// flagValues reads parsed flags by name; the names are NewFlagSet's, so a
// lookup cannot fail.
type flagValues struct{ fs *pflag.FlagSet }

func (f flagValues) str(name string) string        { v, _ := f.fs.GetString(name); return v }
func (f flagValues) dur(name string) time.Duration { v, _ := f.fs.GetDuration(name); return v }

// parsePoolAndPolicy reads the pool, the strategy and family, the destination exceptions, and logging.
func parsePoolAndPolicy(c *Config, f flagValues) error {
	var err error
	c.AllowOpen, _ = f.fs.GetBool("allow-open")
	if c.AllowDest, err = ParsePrefixes(f.str("allow-dest")); err != nil {
		return fmt.Errorf("--allow-dest: %w", err)
	}
	c.PoolFile = f.str("pool-file")
	switch {
	case c.PoolFile != "" && f.str("pool") != "":
		return fmt.Errorf("--pool-file %q and --pool (or IP_POOL) are both set: use one", c.PoolFile)
	case c.PoolFile != "":
		if c.Pool, c.Upstreams, c.PoolTags, err = ReadPoolFile(c.PoolFile); err != nil {
			return err
		}
	default:
		if c.Pool, c.Upstreams, err = ParseEntries(f.str("pool")); err != nil {
			return err
		}
	}
	if c.Strategy, err = pool.ParseStrategy(f.str("strategy")); err != nil {
		return err
	}
	switch f.str("prefer-family") {
	case "ipv6":
		c.Prefer = pool.IPv6
	case "ipv4":
		c.Prefer = pool.IPv4
	default:
		return fmt.Errorf("--prefer-family %q: want ipv6 or ipv4", f.str("prefer-family"))
	}
	if c.LogLevel, err = zerolog.ParseLevel(strings.ToLower(f.str("log-level"))); err != nil || f.str("log-level") == "" {
		return fmt.Errorf("unknown log level %q (want trace, debug, info, warn or error)", f.str("log-level"))
	}
	switch c.LogFormat = f.str("log-format"); c.LogFormat {
	case "json", "console":
	default:
		return fmt.Errorf("unknown log format %q (want json or console)", c.LogFormat)
	}
	return nil
}

// parseTimeouts reads the timeouts, the connection cap and the request head cap.
func parseTimeouts(c *Config, f flagValues) error {
	for _, d := range []string{"dial-timeout", "dns-timeout", "keepalive-timeout", "handshake-timeout", "header-timeout", "idle-timeout", "udp-idle-timeout", "shutdown-timeout"} {
		if f.dur(d) <= 0 {
			return fmt.Errorf("--%s %s: must be positive", d, f.dur(d))
		}
	}
	c.DialTimeout, c.HandshakeTimeout = f.dur("dial-timeout"), f.dur("handshake-timeout")
	c.HeaderTimeout, c.ShutdownTimeout = f.dur("header-timeout"), f.dur("shutdown-timeout")
	c.IdleTimeout, c.UDPIdleTimeout = f.dur("idle-timeout"), f.dur("udp-idle-timeout")
	c.DNSTimeout, c.KeepAliveTimeout = f.dur("dns-timeout"), f.dur("keepalive-timeout")
	c.MaxConns, _ = f.fs.GetInt64("max-conns")
	if c.MaxHeaderBytes, _ = f.fs.GetInt("max-header-bytes"); c.MaxHeaderBytes < 1024 || c.MaxHeaderBytes > 1<<20 {
		return fmt.Errorf("--max-header-bytes %d: want 1024 to 1048576", c.MaxHeaderBytes)
	}
	switch {
	case c.MaxConns < 0:
		return fmt.Errorf("--max-conns %d: must be positive, or 0 for the default", c.MaxConns)
	case c.MaxConns == 0:
		c.MaxConns = DefaultMaxConns()
	}
	return nil
}

// parseUsers reads the credentials: PROXY_USER and PROXY_PASS, the users file, the trusted networks.
func parseUsers(c *Config, f flagValues) error {
	var err error
	user, pass := f.str("user"), f.str("pass")
	switch {
	case user == "" && pass != "":
		return errors.New("a password is set but no user (set --user or PROXY_USER)")
	case user != "" && pass == "":
		return fmt.Errorf("user %q has no password (set PROXY_PASS or --pass)", user)
	case user != "":
		if len(pass) > 255 {
			return fmt.Errorf("user %q: the password must be at most 255 bytes (SOCKS5 limit)", user)
		}
		if err := auth.ValidName(user); err != nil {
			return err
		}
		sc := auth.PlainUser(user, pass)
		c.Shortcut = &sc
	}
	c.UsersFile = f.str("users-file")
	if c.Users, err = ReadUsers(*c); err != nil {
		return err
	}
	if c.AllowClients, err = ParsePrefixes(f.str("allow-clients")); err != nil {
		return fmt.Errorf("--allow-clients: %w", err)
	}
	if c.ProxyProtocolFrom, err = ParsePrefixes(f.str("proxy-protocol-from")); err != nil {
		return fmt.Errorf("--proxy-protocol-from: %w", err)
	}
	return nil
}

// parseRateLimit reads --per-ip-rate and its burst and wait.
func parseRateLimit(c *Config, f flagValues) error {
	var err error
	if v := f.str("per-ip-rate"); v != "" {
		if c.PerIPRate, err = strconv.ParseFloat(strings.TrimSuffix(v, "/s"), 64); err != nil || c.PerIPRate <= 0 {
			return fmt.Errorf("--per-ip-rate %q: want uses per second, e.g. 5/s", v)
		}
	}
	if c.PerIPBurst, _ = f.fs.GetInt("per-ip-burst"); c.PerIPBurst < 0 {
		return fmt.Errorf("--per-ip-burst %d: must be positive", c.PerIPBurst)
	}
	if c.PerIPWait = f.dur("per-ip-wait"); c.PerIPWait < 0 {
		return fmt.Errorf("--per-ip-wait %s: must not be negative", c.PerIPWait)
	}
	return nil
}

// parseListeners reads the listeners and the TLS files, refusing an open
// proxy on a public address by accident (TLS is not authentication; a
// client certificate is).
func parseListeners(c *Config, f flagValues) error {
	c.HTTPListen, c.SOCKSListen = f.str("http-listen"), f.str("socks-listen")
	c.HTTPSListen, c.MixedListen = f.str("https-listen"), f.str("listen")
	c.TLSCert, c.TLSKey, c.TLSClientCA = f.str("tls-cert"), f.str("tls-key"), f.str("tls-client-ca")
	listeners := []struct{ name, addr string }{
		{"http-listen", c.HTTPListen}, {"socks-listen", c.SOCKSListen}, {"https-listen", c.HTTPSListen}, {"listen", c.MixedListen},
	}
	seen := map[string]string{}
	for _, l := range listeners {
		if l.addr == "" {
			continue
		}
		if other, ok := seen[l.addr]; ok && !strings.HasSuffix(l.addr, ":0") {
			return fmt.Errorf("--%s and --%s listen on the same address %q (--listen serves every protocol on one port)", other, l.name, l.addr)
		}
		seen[l.addr] = l.name
	}
	if len(seen) == 0 {
		return errors.New("every listener is disabled (set --http-listen, --socks-listen, --https-listen or --listen)")
	}
	if err := checkTLSFiles(c); err != nil {
		return err
	}
	for _, l := range listeners {
		if l.addr == "" {
			continue
		}
		loopback, err := checkListen(l.addr)
		if err != nil {
			return fmt.Errorf("--%s %q: %w", l.name, l.addr, err)
		}
		// A client certificate authenticates only where TLS is required:
		// the mixed port serves plain HTTP and SOCKS5 too.
		certified := c.TLSClientCA != "" && l.name == "https-listen"
		if !loopback && len(c.Users) == 0 && len(c.AllowClients) == 0 && !certified && !c.AllowOpen {
			return fmt.Errorf("--%s %q is not a loopback address and no credentials are set: "+
				"set PROXY_USER and PROXY_PASS (or --users-file, --allow-clients or --tls-client-ca), or pass --allow-open to run an open proxy on purpose", l.name, l.addr)
		}
	}
	return nil
}

// checkTLSFiles checks that the TLS flags come together: a certificate
// and its key, for a listener that uses them. The files themselves are
// loaded (and their errors named) by the server at start.
func checkTLSFiles(c *Config) error {
	switch {
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return errors.New("--tls-cert and --tls-key (TLS_CERT, TLS_KEY) go together: set both")
	case c.HTTPSListen != "" && c.TLSCert == "":
		return fmt.Errorf("--https-listen %q needs a certificate: set --tls-cert and --tls-key (rotor cert --host NAME writes a self-signed pair)", c.HTTPSListen)
	case c.TLSCert != "" && c.HTTPSListen == "" && c.MixedListen == "":
		return errors.New("--tls-cert is set but no listener speaks TLS: set --https-listen or --listen")
	case c.TLSClientCA != "" && c.TLSCert == "":
		return errors.New("--tls-client-ca needs --tls-cert and --tls-key: client certificates are asked for in a TLS handshake")
	}
	return nil
}

// parseHealth reads the health checker.
func parseHealth(c *Config, f flagValues) error {
	if c.HealthTarget = f.str("health-target"); c.HealthTarget != "" {
		if err := health.ParseTarget(c.HealthTarget); err != nil {
			return err
		}
	}
	if c.HealthInterval = f.dur("health-interval"); c.HealthInterval < 100*time.Millisecond {
		return fmt.Errorf("--health-interval %s: want at least 100ms", c.HealthInterval)
	}
	if c.HealthTimeout = f.dur("health-timeout"); c.HealthTimeout < 0 {
		return fmt.Errorf("--health-timeout %s: want 0 (automatic) or more", c.HealthTimeout)
	}
	c.HealthFall, _ = f.fs.GetInt("health-fall")
	c.HealthRise, _ = f.fs.GetInt("health-rise")
	for _, v := range []struct {
		name string
		n    int
	}{{"health-fall", c.HealthFall}, {"health-rise", c.HealthRise}} {
		if v.n < 1 || v.n > 100 {
			return fmt.Errorf("--%s %d: want 1 to 100", v.name, v.n)
		}
	}
	return nil
}

// parseObservability reads the metrics and debug listeners.
func parseObservability(c *Config, f flagValues) error {
	if c.MetricsListen = f.str("metrics-listen"); c.MetricsListen != "" {
		if _, err := checkListen(c.MetricsListen); err != nil {
			return fmt.Errorf("--metrics-listen %q: %w", c.MetricsListen, err)
		}
	}
	if c.DebugListen = f.str("debug-listen"); c.DebugListen != "" {
		loopback, err := checkListen(c.DebugListen)
		if err != nil {
			return fmt.Errorf("--debug-listen %q: %w", c.DebugListen, err)
		}
		if !loopback {
			return fmt.Errorf("--debug-listen %q: profiles are served on loopback only", c.DebugListen)
		}
	}
	return nil
}

// DefaultMaxConns derives the connection cap from the open-file limit
// (which Go raises to the hard limit at start-up): a client connection can
// hold two descriptors (its own and its upstream), and a quarter (at most
// 64) stay free for listeners, pooled upstream connections, logs and DNS.
func DefaultMaxConns() int64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 1024
	}
	reserve := min(rl.Cur/4, 64)
	return max(int64(rl.Cur-reserve)/2, 1)
}

// ParseEntries parses a pool as --pool and IP_POOL give it: local
// addresses and blocks (ParsePool) and upstream proxies
// (pool.ParseUpstream), comma-separated, in any order. A comma inside an
// upstream's password must be written %2C.
func ParseEntries(s string) ([]netip.Prefix, []*pool.Upstream, error) {
	var local []string
	var ups []*pool.Upstream
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); !pool.IsUpstreamEntry(f) {
			local = append(local, f)
			continue
		}
		up, err := pool.ParseUpstream(f)
		if err != nil {
			return nil, nil, err
		}
		ups = append(ups, up)
	}
	if len(ups) > 0 && strings.TrimSpace(strings.Join(local, "")) == "" {
		return nil, ups, nil
	}
	prefixes, err := ParsePool(strings.Join(local, ","))
	return prefixes, ups, err
}

// ParsePool parses a comma-separated list of IP addresses and CIDR
// blocks. A single address is returned as its /32 or /128.
func ParsePool(s string) ([]netip.Prefix, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("no pool: set --pool or IP_POOL to a comma-separated list of local IPs or CIDR blocks")
	}
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		var p netip.Prefix
		if strings.Contains(f, "/") {
			var err error
			if p, err = netip.ParsePrefix(f); err != nil {
				return nil, fmt.Errorf("pool entry %q is not an IP address or CIDR block", f)
			}
			if p.Addr().Is4In6() {
				return nil, fmt.Errorf("pool entry %q: write IPv4 blocks as IPv4 (a.b.c.d/n)", f)
			}
			if m := p.Masked(); m != p {
				return nil, fmt.Errorf("pool entry %q has host bits set: did you mean %s?", f, m)
			}
			if shortest := map[bool]int{true: 8, false: 16}[p.Addr().Is4()]; p.Bits() < shortest {
				return nil, fmt.Errorf("pool entry %q: a block must be /%d or longer", f, shortest)
			}
		} else {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("pool entry %q is not an IP address or CIDR block", f)
			}
			a = a.Unmap()
			p = netip.PrefixFrom(a, a.BitLen())
		}
		a := p.Addr()
		if a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" {
			return nil, fmt.Errorf("pool entry %q cannot be a source address (unspecified, multicast or zoned)", f)
		}
		for _, q := range out {
			if q.Overlaps(p) {
				return nil, fmt.Errorf("pool entry %q overlaps %s", f, q)
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// openConfigFile opens a file rotor reads at start-up and on every reload.
// Refused, it says which user rotor runs as: under systemd's DynamicUser
// or in the container image that is not the file's owner.
func openConfigFile(path string) (*os.File, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrPermission) {
		return nil, fmt.Errorf("%w (rotor runs as uid %d, gid %d: make the file readable by it)", err, os.Getuid(), os.Getgid())
	}
	return f, err
}

// ReadPoolFile reads a pool file: one entry (address or CIDR block) per
// line, optionally followed by tags that users' pool= settings name:
//
//	203.0.113.7
//	203.0.113.8      team-a
//	2001:db8:1::/64  team-a team-b
//	socks5://user:pass@198.51.100.9:1080
//
// An upstream proxy entry takes tags as an address does. Blank lines and lines starting with # are ignored. Errors name the
// file and line.
func ReadPoolFile(path string) ([]netip.Prefix, []*pool.Upstream, map[string][]netip.Prefix, error) {
	entries, ups, tags, err := readPoolFile(path)
	if err != nil {
		return nil, nil, nil, err
	}
	if len(entries)+len(ups) == 0 {
		return nil, nil, nil, fmt.Errorf("pool file %s: no entries", path)
	}
	return entries, ups, tags, nil
}

func readPoolFile(path string) ([]netip.Prefix, []*pool.Upstream, map[string][]netip.Prefix, error) {
	f, err := openConfigFile(path)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("pool file: %w", err)
	}
	defer f.Close()
	var entries []netip.Prefix
	var ups []*pool.Upstream
	tags := map[string][]netip.Prefix{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		fields := strings.Fields(line)
		if pool.IsUpstreamEntry(fields[0]) {
			up, err := pool.ParseUpstream(fields[0])
			if err == nil {
				err = checkTags(fields[1:])
			}
			if err != nil {
				return nil, nil, nil, fmt.Errorf("pool file %s line %d: %w", path, n, err)
			}
			up.Tags = fields[1:]
			ups = append(ups, up)
			continue
		}
		e, err := ParsePool(fields[0])
		if err != nil {
			return nil, nil, nil, fmt.Errorf("pool file %s line %d: %w", path, n, err)
		}
		for _, prev := range entries {
			if prev.Overlaps(e[0]) {
				return nil, nil, nil, fmt.Errorf("pool file %s line %d: %s overlaps %s", path, n, e[0], prev)
			}
		}
		entries = append(entries, e[0])
		if err := checkTags(fields[1:]); err != nil {
			return nil, nil, nil, fmt.Errorf("pool file %s line %d: %w", path, n, err)
		}
		for _, tag := range fields[1:] {
			tags[tag] = append(tags[tag], e[0])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, nil, fmt.Errorf("pool file %s: %w", path, err)
	}
	return entries, ups, tags, nil
}

// checkTags refuses tags that read as entries.
func checkTags(tags []string) error {
	for _, tag := range tags {
		if _, err := netip.ParsePrefix(tag); err == nil || strings.Contains(tag, ",") || pool.IsUpstreamEntry(tag) {
			return fmt.Errorf("tag %q: want a name", tag)
		}
		if _, err := netip.ParseAddr(tag); err == nil {
			return fmt.Errorf("tag %q: want a name, one entry per line", tag)
		}
	}
	return nil
}

// ReadUsers is c's users: the users file's (read now) and the
// PROXY_USER shortcut. Errors name the file and line.
func ReadUsers(c Config) ([]auth.UserSpec, error) {
	var users []auth.UserSpec
	if c.UsersFile != "" {
		f, err := openConfigFile(c.UsersFile)
		if err != nil {
			return nil, fmt.Errorf("users file: %w", err)
		}
		defer f.Close()
		if users, err = auth.ParseUsers(f); err != nil {
			return nil, fmt.Errorf("users file %s: %w", c.UsersFile, err)
		}
	}
	if c.Shortcut != nil {
		for _, u := range users {
			if u.Name == c.Shortcut.Name {
				return nil, fmt.Errorf("users file %s line %d: user %q is also PROXY_USER", c.UsersFile, u.Line, u.Name)
			}
		}
		users = append(users, *c.Shortcut)
	}
	return users, nil
}

// Reload re-reads c's pool file and users file (flags and environment stay
// as they were) and returns c with the new pool and users.
func Reload(c Config) (Config, error) {
	var err error
	if c.PoolFile != "" {
		if c.Pool, c.Upstreams, c.PoolTags, err = ReadPoolFile(c.PoolFile); err != nil {
			return c, err
		}
	}
	if c.Users, err = ReadUsers(c); err != nil {
		return c, err
	}
	return c, nil
}

// ParsePrefixes parses a comma-separated list of CIDRs; a bare IP is its
// own /32 or /128.
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("entry %q is not a CIDR or an IP address", f)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// checkListen validates host:port and reports whether host is loopback.
// The host must be an IP literal, "localhost" or empty (all interfaces).
func checkListen(addr string) (loopback bool, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false, errors.New("want host:port")
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || (p == 0 && port != "0") {
		return false, fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	switch host {
	case "":
		return false, nil
	case "localhost":
		return true, nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false, fmt.Errorf("host %q is not an IP address or localhost", host)
	}
	return ip.Unmap().IsLoopback(), nil
}

func lookup(getenv func(string) string, name string) (string, bool) {
	if getenv == nil {
		return "", false
	}
	v := getenv(name)
	return v, v != ""
}

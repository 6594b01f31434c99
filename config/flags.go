package config

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/pool/health"
	"github.com/rotor-proxy/rotor/socks"
)

// flagDef is one flag: its default's type is the flag's type, and env
// names the environment variable read when the flag is not given.
type flagDef struct {
	name, env string
	def       any // string, bool, int, int64 or time.Duration
	usage     string
}

// flagGroup is a heading of --help and the flags under it.
type flagGroup struct {
	title string
	flags []flagDef
}

// annotationEnv and annotationGroup carry a flag's environment variable
// and group on the pflag.Flag, where Parse and Usage find them.
const (
	annotationEnv   = "rotor-env"
	annotationGroup = "rotor-group"
)

// flagGroups is every flag of rotor, in --help's order. IP_POOL,
// LISTEN_ADDR, PROXY_USER and PROXY_PASS are the names the Pingora proxy
// rotor replaces used.
func flagGroups() []flagGroup {
	return []flagGroup{
		{"Listeners", []flagDef{
			{"http-listen", "LISTEN_ADDR", DefaultHTTPListen, "HTTP proxy listen address; empty disables"},
			{"socks-listen", "SOCKS_LISTEN_ADDR", DefaultSOCKSListen, "SOCKS5 proxy listen address; empty disables"},
			{"https-listen", "HTTPS_LISTEN_ADDR", "", "HTTP proxy inside TLS (an https:// proxy URL) on this address; needs --tls-cert and --tls-key; empty disables"},
			{"listen", "MIXED_LISTEN_ADDR", "", "one port for SOCKS5, HTTP and (with --tls-cert) HTTPS, told apart by the client's first byte; empty disables"},
			{"tls-cert", "TLS_CERT", "", "PEM certificate chain for --https-listen and the mixed port's TLS; re-read on SIGHUP"},
			{"tls-key", "TLS_KEY", "", "PEM private key of --tls-cert; re-read on SIGHUP"},
			{"tls-client-ca", "TLS_CLIENT_CA", "", "PEM CA certificates: TLS clients must present a certificate signed by one; its subject common name is the user; re-read on SIGHUP"},
			{"allow-open", "", false, "allow listening on a non-loopback address without credentials"},
		}},
		{"Pool", []flagDef{
			{"pool", "IP_POOL", "", "comma-separated local source IPs, CIDR blocks (a random address per connection) and upstream proxies (socks5://, http:// or https://[user:pass@]host:port) to rotate through (required, or --pool-file)"},
			{"pool-file", "POOL_FILE", "", "file with the pool, one address or CIDR block per line, optional tags after it; re-read on SIGHUP; instead of --pool"},
			{"strategy", "ROTATION_STRATEGY", string(pool.RoundRobin), "rotation strategy: " + pool.StrategyChoices},
			{"prefer-family", "PREFER_FAMILY", "ipv6", "with IPv4 and IPv6 in the pool, the family tried first for a name with both: ipv6 or ipv4"},
			{"allow-dest", "ALLOW_DEST", "", "comma-separated CIDRs or IPs rotor may connect to although the policy refuses them (loopback, private, link-local, the host's own addresses...)"},
		}},
		{"Users", []flagDef{
			{"user", "PROXY_USER", "", "proxy user name for both listeners"},
			{"pass", "PROXY_PASS", "", "proxy password (prefer the environment variable: flags show in ps)"},
			{"users-file", "USERS_FILE", "", "htpasswd-style users file (bcrypt, {SHA256} or {PLAIN}), with optional per-user pool, max-conns and rate; re-read on SIGHUP"},
			{"allow-clients", "ALLOW_CLIENTS", "", "comma-separated CIDRs whose clients need no credentials"},
			{"proxy-protocol-from", "PROXY_PROTOCOL_FROM", "", "comma-separated CIDRs of load balancers whose connections start with a PROXY protocol v1 or v2 header, whose client address rotor then uses; from elsewhere a header is refused"},
		}},
		{"Limits and timeouts", []flagDef{
			{"max-conns", "MAX_CONNS", int64(0), "most client connections served at once, both listeners together (0: half the open-file limit)"},
			{"max-header-bytes", "MAX_HEADER_BYTES", DefaultMaxHeaderBytes, "largest HTTP request head accepted; larger gets 431"},
			{"per-ip-rate", "PER_IP_RATE", "", "use no source address (or block) more than N times a second, e.g. 5/s"},
			{"per-ip-burst", "PER_IP_BURST", 0, "requests one source address may take at once above --per-ip-rate (default: the rate, at least 1)"},
			{"per-ip-wait", "PER_IP_WAIT", time.Second, "how long a request waits for a source address under --per-ip-rate before 429 / SOCKS5 0x01"},
			{"dial-timeout", "DIAL_TIMEOUT", DefaultDialTimeout, "bound on resolving and connecting to a target"},
			{"dns-timeout", "DNS_TIMEOUT", DefaultDNSTimeout, "bound on resolving a target name"},
			{"handshake-timeout", "HANDSHAKE_TIMEOUT", DefaultHandshakeTimeout, "bound on a SOCKS5 greeting, auth and request"},
			{"header-timeout", "HEADER_TIMEOUT", DefaultHeaderTimeout, "bound on reading an HTTP request head (then 408)"},
			{"idle-timeout", "IDLE_TIMEOUT", DefaultIdleTimeout, "close a tunnel or forwarded body that moves no byte either way for this long"},
			{"udp-idle-timeout", "UDP_IDLE_TIMEOUT", socks.DefaultUDPIdleTimeout, "end a SOCKS5 UDP association with no datagram either way for this long"},
			{"keepalive-timeout", "KEEPALIVE_TIMEOUT", DefaultKeepAliveTimeout, "close a keep-alive HTTP client connection idle this long"},
			{"shutdown-timeout", "SHUTDOWN_TIMEOUT", DefaultShutdownTimeout, "how long live requests and tunnels may drain on SIGTERM"},
		}},
		{"Health", []flagDef{
			{"health-target", "HEALTH_TARGET", "", "host:port or http(s) URL probed from every source address each --health-interval; empty: no active probes"},
			{"health-interval", "HEALTH_INTERVAL", health.DefaultInterval, "how often sources are probed, and addresses that could not be bound re-checked"},
			{"health-timeout", "HEALTH_TIMEOUT", time.Duration(0), "bound on one probe; 0: the smaller of --health-interval and 10s"},
			{"health-fall", "HEALTH_FALL", health.DefaultFall, "consecutive failed probes that take a source out of rotation"},
			{"health-rise", "HEALTH_RISE", health.DefaultRise, "consecutive passed probes that bring a source back"},
		}},
		{"Observability", []flagDef{
			{"metrics-listen", "METRICS_ADDR", "", "serve Prometheus /metrics, /healthz and /readyz on this address; empty disables"},
			{"debug-listen", "DEBUG_ADDR", "", "serve /debug/pprof/ and /debug/limits (timeout and limit hits by name) on this loopback address; empty disables"},
			{"log-level", "LOG_LEVEL", "info", "trace, debug, info, warn or error"},
			{"log-format", "LOG_FORMAT", "json", "json, or console for people"},
			{"version", "", false, "print the version and exit"},
		}},
	}
}

// NewFlagSet returns rotor's flags, unparsed, for Parse and for --help.
func NewFlagSet(name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SortFlags = false
	for _, g := range flagGroups() {
		for _, f := range g.flags {
			usage := f.usage
			if f.env != "" {
				usage += " (env " + f.env + ")"
			}
			switch d := f.def.(type) {
			case string:
				fs.String(f.name, d, usage)
			case bool:
				fs.Bool(f.name, d, usage)
			case int:
				fs.Int(f.name, d, usage)
			case int64:
				fs.Int64(f.name, d, usage)
			case time.Duration:
				fs.Duration(f.name, d, usage)
			default:
				panic(fmt.Sprintf("flag --%s: default of type %T", f.name, f.def))
			}
			_ = fs.SetAnnotation(f.name, annotationGroup, []string{g.title})
			if f.env != "" {
				_ = fs.SetAnnotation(f.name, annotationEnv, []string{f.env})
			}
		}
	}
	return fs
}

// envNames maps each flag of fs that reads an environment variable to it.
func envNames(fs *pflag.FlagSet) map[string]string {
	m := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) {
		if e := f.Annotations[annotationEnv]; len(e) == 1 {
			m[f.Name] = e[0]
		}
	})
	return m
}

// Usage writes rotor's flags under their group headings.
func Usage(w io.Writer) {
	fs := NewFlagSet("rotor")
	for _, g := range flagGroups() {
		part := pflag.NewFlagSet(g.title, pflag.ContinueOnError)
		part.SortFlags = false
		for _, f := range g.flags {
			part.AddFlag(fs.Lookup(f.name))
		}
		fmt.Fprintf(w, "\n%s:\n%s", g.title, part.FlagUsages())
	}
}

package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/rotor-proxy/rotor/auth"
	"github.com/rotor-proxy/rotor/pool"
)

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestDefaultsAndEnv(t *testing.T) {
	c, err := Parse(nil, env(map[string]string{"IP_POOL": "127.0.0.2, 127.0.0.3", "PROXY_USER": "u", "PROXY_PASS": "p"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Pool) != 2 || c.Pool[1].String() != "127.0.0.3/32" {
		t.Errorf("pool = %v, want [127.0.0.2 127.0.0.3]", c.Pool)
	}
	if c.HTTPListen != DefaultHTTPListen || c.SOCKSListen != DefaultSOCKSListen {
		t.Errorf("listen = %q %q, want defaults", c.HTTPListen, c.SOCKSListen)
	}
	if c.Strategy != pool.RoundRobin || c.ShutdownTimeout != 10*time.Second || c.LogFormat != "json" {
		t.Errorf("defaults: strategy %q, shutdown %s, format %q", c.Strategy, c.ShutdownTimeout, c.LogFormat)
	}
	users, err := auth.Build(c.Users, nil, nil)
	if err != nil || len(c.Users) != 1 {
		t.Fatalf("users %v: %v", c.Users, err)
	}
	if _, err := users.Check(nil, netip.Addr{}, []byte("u"), []byte("p")); err != nil {
		t.Error("PROXY_USER/PROXY_PASS not applied")
	}
}

func TestFlagsBeatEnv(t *testing.T) {
	c, err := Parse([]string{"--pool", "127.0.0.9", "--http-listen", "127.0.0.1:8000", "--strategy", "random"},
		env(map[string]string{"IP_POOL": "127.0.0.2", "LISTEN_ADDR": "127.0.0.1:9000", "ROTATION_STRATEGY": "least-recent", "SOCKS_LISTEN_ADDR": "127.0.0.1:9001"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Pool[0].String() != "127.0.0.9/32" || c.HTTPListen != "127.0.0.1:8000" || c.Strategy != pool.Random {
		t.Errorf("flags did not win: %v %q %q", c.Pool, c.HTTPListen, c.Strategy)
	}
	if c.SOCKSListen != "127.0.0.1:9001" {
		t.Errorf("SOCKS_LISTEN_ADDR not used: %q", c.SOCKSListen)
	}
}

func TestErrorsNameTheValue(t *testing.T) {
	base := []string{"--pool", "127.0.0.2"}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no pool", nil, nil, "IP_POOL"},
		{"not an IP", []string{"--pool", "127.0.0.2,banana"}, nil, `"banana"`},
		{"env not an IP", nil, map[string]string{"IP_POOL": "1.2.3"}, `"1.2.3"`},
		{"unspecified", []string{"--pool", "0.0.0.0"}, nil, `"0.0.0.0"`},
		{"strategy", append(base, "--strategy", "fastest"), nil, `"fastest"`},
		{"listen", append(base, "--http-listen", "localhost"), nil, `"localhost"`},
		{"listen port", append(base, "--socks-listen", "127.0.0.1:99999"), nil, `"99999"`},
		{"listen host", append(base, "--socks-listen", "example.com:1080"), nil, `"example.com"`},
		{"user without pass", append(base, "--user", "alice"), nil, `"alice"`},
		{"pass without user", base, map[string]string{"PROXY_PASS": "x"}, "no user"},
		{"open proxy", append(base, "--http-listen", "0.0.0.0:7777"), nil, "--allow-open"},
		{"open proxy all ifaces", append(base, "--socks-listen", ":1080"), nil, "--allow-open"},
		{"log level", append(base, "--log-level", "loud"), nil, `"loud"`},
		{"log format", append(base, "--log-format", "xml"), nil, `"xml"`},
		{"timeout", append(base, "--dial-timeout", "0s"), nil, "dial-timeout"},
		{"unknown flag", append(base, "--colour"), nil, "colour"},
		{"both disabled", append(base, "--http-listen", "", "--socks-listen", ""), nil, "disabled"},
		{"health target", append(base, "--health-target", "example.com"), nil, `"example.com"`},
		{"health interval", append(base, "--health-interval", "1ms"), nil, "1ms"},
		{"health fall", append(base, "--health-fall", "0"), nil, "health-fall 0"},
		{"health timeout", append(base, "--health-timeout", "-1s"), nil, "-1s"},
		{"metrics listen", append(base, "--metrics-listen", "metrics:9100"), nil, `"metrics"`},
		{"env metrics", base, map[string]string{"METRICS_ADDR": "9100"}, `"9100"`},
		{"same address", append(base, "--http-listen", "127.0.0.1:5000", "--socks-listen", "127.0.0.1:5000"), nil, "127.0.0.1:5000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.args, env(tc.env))
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %s", err, tc.want)
			}
		})
	}
}

func TestOpenProxyNeedsConsent(t *testing.T) {
	args := []string{"--pool", "127.0.0.2", "--http-listen", "0.0.0.0:7777"}
	if _, err := Parse(append(args, "--allow-open"), nil); err != nil {
		t.Errorf("--allow-open: %v", err)
	}
	if _, err := Parse(append(args, "--user", "u", "--pass", "p"), nil); err != nil {
		t.Errorf("with credentials: %v", err)
	}
}

func TestHelp(t *testing.T) {
	if _, err := Parse([]string{"--help"}, nil); !errors.Is(err, pflag.ErrHelp) {
		t.Fatalf("got %v, want pflag.ErrHelp", err)
	}
}

func TestLimitFlagsAndEnv(t *testing.T) {
	c, err := Parse([]string{"--pool", "127.0.0.2", "--max-conns", "77"}, env(map[string]string{
		"DIAL_TIMEOUT": "3s", "IDLE_TIMEOUT": "1m", "MAX_CONNS": "5", "MAX_HEADER_BYTES": "8192", "KEEPALIVE_TIMEOUT": "30s"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.DialTimeout != 3*time.Second || c.IdleTimeout != time.Minute || c.MaxConns != 77 || c.MaxHeaderBytes != 8192 || c.KeepAliveTimeout != 30*time.Second {
		t.Fatalf("got dial %s idle %s max-conns %d header %d keepalive %s", c.DialTimeout, c.IdleTimeout, c.MaxConns, c.MaxHeaderBytes, c.KeepAliveTimeout)
	}
	d, _ := Parse([]string{"--pool", "127.0.0.2"}, nil)
	if d.MaxConns != DefaultMaxConns() || d.MaxConns < 1 || d.DNSTimeout != DefaultDNSTimeout || d.MaxHeaderBytes != 64<<10 {
		t.Fatalf("defaults: max-conns %d dns %s header %d", d.MaxConns, d.DNSTimeout, d.MaxHeaderBytes)
	}
	for _, bad := range [][]string{{"--max-header-bytes", "10"}, {"--max-conns", "-1"}} {
		if _, err := Parse(append([]string{"--pool", "127.0.0.2"}, bad...), nil); err == nil || !strings.Contains(err.Error(), bad[1]) {
			t.Errorf("%v: %v, want an error naming %s", bad, err, bad[1])
		}
	}
	if _, err := Parse([]string{"--pool", "127.0.0.2"}, env(map[string]string{"IDLE_TIMEOUT": "soon"})); err == nil || !strings.Contains(err.Error(), "soon") {
		t.Errorf("IDLE_TIMEOUT=soon: %v, want an error naming it", err)
	}
}

func TestAllowDest(t *testing.T) {
	c, err := Parse([]string{"--pool", "127.0.0.2"}, env(map[string]string{"ALLOW_DEST": "127.0.0.0/8, ::1, 10.1.2.3"}))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range c.AllowDest {
		got = append(got, p.String())
	}
	if strings.Join(got, " ") != "127.0.0.0/8 ::1/128 10.1.2.3/32" {
		t.Fatalf("AllowDest = %v", got)
	}
	if _, err := Parse([]string{"--pool", "127.0.0.2", "--allow-dest", "10.0.0.0/8,intranet"}, nil); err == nil || !strings.Contains(err.Error(), `"intranet"`) {
		t.Fatalf("bad entry: %v, want an error naming it", err)
	}
}

func TestHealthAndMetricsFromEnv(t *testing.T) {
	c, err := Parse([]string{"--pool", "127.0.0.2"}, env(map[string]string{
		"HEALTH_TARGET": "http://127.0.0.1:9/h", "HEALTH_INTERVAL": "5s", "HEALTH_TIMEOUT": "2s", "METRICS_ADDR": "127.0.0.1:9100"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.HealthTarget != "http://127.0.0.1:9/h" || c.HealthInterval != 5*time.Second || c.HealthTimeout != 2*time.Second || c.MetricsListen != "127.0.0.1:9100" ||
		c.HealthFall != 3 || c.HealthRise != 2 {
		t.Fatalf("got %+v", c)
	}
}

func TestParsePoolBlocks(t *testing.T) {
	got, err := ParsePool("203.0.113.7, 2001:db8:1::/64,198.51.100.0/24, 2001:db8:2::9/128")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"203.0.113.7/32", "2001:db8:1::/64", "198.51.100.0/24", "2001:db8:2::9/128"}
	for i, w := range want {
		if got[i].String() != w {
			t.Errorf("entry %d = %s, want %s", i, got[i], w)
		}
	}
	for bad, why := range map[string]string{
		"2001:db8:1::5/64":              "did you mean 2001:db8:1::/64",
		"2001:db8:1::/64,2001:db8:1::7": `"2001:db8:1::7" overlaps 2001:db8:1::/64`,
		"2000::/8":                      "/16 or longer",
		"10.0.0.0/4":                    `"10.0.0.0/4"`,
		"2001:db8::/999":                `"2001:db8::/999" is not`,
		"::ffff:10.0.0.0/104":           "write IPv4 blocks as IPv4",
		"ff02::/64":                     "multicast",
	} {
		if _, err := ParsePool(bad); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("%q: %v, want an error saying %q", bad, err, why)
		}
	}
	if c, err := Parse([]string{"--pool", "127.0.0.2", "--prefer-family", "ipv4"}, nil); err != nil || c.Prefer != pool.IPv4 {
		t.Errorf("--prefer-family ipv4: %v %v", c.Prefer, err)
	}
	if _, err := Parse([]string{"--pool", "127.0.0.2"}, env(map[string]string{"PREFER_FAMILY": "ipv5"})); err == nil || !strings.Contains(err.Error(), "ipv5") {
		t.Errorf("PREFER_FAMILY=ipv5: %v", err)
	}
}

func TestFilesAndLimits(t *testing.T) {
	dir := t.TempDir()
	pf, uf := filepath.Join(dir, "pool"), filepath.Join(dir, "users")
	os.WriteFile(pf, []byte("# pool\n127.0.0.2 team-a\n127.0.0.3   team-a team-b\n\n2001:db8:1::/64 team-b\n"), 0o600)
	os.WriteFile(uf, []byte("alice:{PLAIN}x pool=team-a\n"), 0o600)
	c, err := Parse([]string{"--pool-file", pf, "--users-file", uf, "--per-ip-rate", "5/s", "--allow-clients", "10.0.0.0/8"},
		env(map[string]string{"PROXY_USER": "bob", "PROXY_PASS": "y", "PER_IP_BURST": "3"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Pool) != 3 || len(c.PoolTags["team-a"]) != 2 || len(c.PoolTags["team-b"]) != 2 || c.PoolTags["team-b"][1].String() != "2001:db8:1::/64" {
		t.Errorf("pool %v tags %v", c.Pool, c.PoolTags)
	}
	if len(c.Users) != 2 || c.Users[0].Name != "alice" || c.Users[1].Name != "bob" {
		t.Errorf("users %v", c.Users)
	}
	if c.PerIPRate != 5 || c.PerIPBurst != 3 || c.PerIPWait != time.Second || len(c.AllowClients) != 1 {
		t.Errorf("limits %v %v %v %v", c.PerIPRate, c.PerIPBurst, c.PerIPWait, c.AllowClients)
	}
	// An allowlist alone is access control enough for a public listener.
	if _, err := Parse([]string{"--pool", "127.0.0.2", "--http-listen", "0.0.0.0:7777", "--allow-clients", "10.0.0.0/8"}, nil); err != nil {
		t.Errorf("public listener with --allow-clients: %v", err)
	}

	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		return p
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--pool-file", pf, "--pool", "127.0.0.2"}, "both set"},
		{[]string{"--pool-file", write("p1", "127.0.0.2\nbanana\n")}, "line 2"},
		{[]string{"--pool-file", write("p2", "127.0.0.0/24\n127.0.0.5\n")}, "line 2: 127.0.0.5/32 overlaps 127.0.0.0/24"},
		{[]string{"--pool-file", write("p3", "127.0.0.2 127.0.0.3\n")}, "one entry per line"},
		{[]string{"--pool-file", write("p4", "# nothing\n")}, "no entries"},
		{[]string{"--pool-file", filepath.Join(dir, "missing")}, "missing"},
		{[]string{"--pool", "127.0.0.2", "--users-file", write("u1", "alice:{PLAIN}x\nbob:secret\n")}, "line 2"},
		{[]string{"--pool", "127.0.0.2", "--users-file", write("u2", "bob:{PLAIN}x\n"), "--user", "bob", "--pass", "y"}, "also PROXY_USER"},
		{[]string{"--pool", "127.0.0.2", "--per-ip-rate", "lots"}, `"lots"`},
		{[]string{"--pool", "127.0.0.2", "--allow-clients", "intranet"}, `--allow-clients: entry "intranet"`},
	} {
		if _, err := Parse(tc.args, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
	if _, err := Parse([]string{"--pool", "127.0.0.2", "--users-file", write("u3", "bob:secret-in-file\n")}, nil); err == nil || strings.Contains(err.Error(), "secret-in-file") {
		t.Errorf("users file error shows the secret: %v", err)
	}
}

// Upstream proxies mix with local entries in --pool and the pool file,
// with tags as addresses have; errors never show their passwords.
func TestUpstreamEntries(t *testing.T) {
	prefixes, ups, err := ParseEntries("127.0.0.2, socks5://u:pw-1@127.0.0.1:1080 ,http://127.0.0.1:3128,127.0.0.3")
	if err != nil || len(prefixes) != 2 || len(ups) != 2 || ups[0].Label() != "socks5://***@127.0.0.1:1080" {
		t.Fatalf("%v %v %v", prefixes, ups, err)
	}
	if _, ups, err := ParseEntries("http://a:1"); err != nil || len(ups) != 1 {
		t.Fatalf("upstreams alone: %v %v", ups, err)
	}
	if _, _, err := ParseEntries("ftp://u:hunter2@h:1"); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("bad scheme: %v", err)
	}
	dir := t.TempDir()
	pf := filepath.Join(dir, "pool")
	if err := os.WriteFile(pf, []byte("127.0.0.2 team\nsocks5://u:hunter2@127.0.0.1:1080\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if p, ups, tags, err := ReadPoolFile(pf); err != nil || len(p) != 1 || len(ups) != 1 || len(tags["team"]) != 1 {
		t.Fatalf("pool file: %v %v %v %v", p, ups, tags, err)
	}
	if err := os.WriteFile(pf, []byte("socks5://u:hunter2@127.0.0.1:1080 team paid\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ups, _, err := ReadPoolFile(pf); err != nil || len(ups) != 1 || strings.Join(ups[0].Tags, ",") != "team,paid" {
		t.Fatalf("tagged upstream line: %v %v", ups, err)
	}
	if err := os.WriteFile(pf, []byte("socks5://u:hunter2@127.0.0.1:1080 10.0.0.0/8\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := ReadPoolFile(pf); err == nil || !strings.Contains(err.Error(), "line 1") || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("upstream line with an address for a tag: %v", err)
	}
}

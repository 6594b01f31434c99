package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/serve"
)

// What a user types, and what they get: help and version exit 0 on every
// command, mistakes exit 2 with a message that says what to do instead.
func TestCommandLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args       []string
		code       int
		out, err   string
		notInError string
	}{
		{[]string{"help"}, 0, "Commands:\n  demo", "", ""},
		{[]string{"--help"}, 0, "Limits and timeouts:", "", ""},
		{[]string{"-h"}, 0, "Observability:", "", ""},
		{[]string{"version"}, 0, "rotor ", "", ""},
		{[]string{"--version"}, 0, "go1.", "", ""},
		{[]string{"check", "--help"}, 0, "Usage: rotor check --pool", "", ""},
		{[]string{"passwd", "--help"}, 0, "Usage: rotor passwd [--cost N] NAME", "", ""},
		{[]string{"demo", "--help"}, 0, "Usage: rotor demo", "", ""},
		{[]string{"version", "--help"}, 0, "Usage: rotor version", "", ""},
		{[]string{"help", "check"}, 0, "--allow-dest", "", ""},
		{[]string{"help", "nope"}, 2, "", `unknown command "nope"; commands: demo, check, passwd, cert, version, help`, ""},
		{[]string{"bogus"}, 2, "", `rotor: unknown command "bogus"; commands: demo, check, passwd, cert, version, help (rotor help)`, ""},
		{[]string{"--stratgy", "random"}, 2, "", "rotor: unknown flag --stratgy; did you mean --strategy? (rotor --help lists the flags)", ""},
		{[]string{"check", "--urll", "x"}, 2, "", "rotor check: unknown flag --urll; did you mean --url? (rotor check --help lists the flags)", ""},
		{[]string{"--frobnicate"}, 2, "", "unknown flag --frobnicate (rotor --help lists the flags)", "did you mean"},
		{[]string{"--pool", "127.0.0.2", "--strategy", "foo"}, 2, "", "want round-robin, random or least-recent", "["},
		{[]string{"demo", "extra"}, 2, "", "rotor demo takes no arguments", ""},
		{[]string{"cert", "--help"}, 0, "Usage: rotor cert --host NAME[,IP...]", "", ""},
		{[]string{"cert"}, 2, "", "usage: rotor cert --host NAME", ""},
		{[]string{"--pool", "127.0.0.2", "--https-listen", "127.0.0.1:0"}, 2, "", "--https-listen \"127.0.0.1:0\" needs a certificate: set --tls-cert and --tls-key (rotor cert --host NAME", ""},
		{[]string{"--pool", "127.0.0.2", "--listen", "127.0.0.1:0", "--tls-cert", "x.crt"}, 2, "", "--tls-cert and --tls-key (TLS_CERT, TLS_KEY) go together", ""},
		{[]string{"--pool", "127.0.0.2", "--tls-cert", "x.crt", "--tls-key", "x.key"}, 2, "", "no listener speaks TLS", ""},
		{[]string{"--pool", "127.0.0.2", "--listen", "127.0.0.1:7777"}, 2, "", "--http-listen and --listen listen on the same address", ""},
		{[]string{"--pool", "127.0.0.2", "--http-listen", "", "--socks-listen", ""}, 2, "", "every listener is disabled", ""},
		{[]string{"--pool", "127.0.0.2", "--https-listen", "127.0.0.1:0", "--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"}, 2, "",
			"TLS files: certificate /nonexistent.crt and key /nonexistent.key", ""},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), tc.args, &out, &errb, func(string) string { return "" })
		if code != tc.code || !strings.Contains(out.String(), tc.out) || !strings.Contains(errb.String(), tc.err) ||
			(tc.notInError != "" && strings.Contains(errb.String(), tc.notInError)) {
			t.Errorf("rotor %s: exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr with %q",
				strings.Join(tc.args, " "), code, firstLines(out.String()), errb.String(), tc.code, tc.out, tc.err)
		}
	}
}

// rotor cert writes a pair rotor serves, for the names and addresses
// given, and prints the curl line to use it.
func TestCertCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "p.crt"), filepath.Join(dir, "p.key")
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"cert", "--host", "proxy.example,127.0.0.1", "--cert", crt, "--key", key}, &out, &errb,
		func(string) string { return "" }); code != 0 {
		t.Fatalf("rotor cert: exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "curl --proxy https://USER:PASS@proxy.example:8443 --proxy-cacert "+crt) {
		t.Errorf("rotor cert printed %q", out.String())
	}
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v, mode %v; want 0600", err, st.Mode())
	}
	tc, err := serve.LoadTLS(crt, key, "")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(tc.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.VerifyHostname("proxy.example") != nil || leaf.VerifyHostname("127.0.0.1") != nil {
		t.Errorf("certificate names %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
}

func firstLines(s string) string {
	if lines := strings.SplitN(s, "\n", 4); len(lines) > 3 {
		return strings.Join(lines[:3], "\n") + "..."
	}
	return s
}

// --help names the environment variable of every flag that reads one,
// under group headings, and says what --debug-listen serves.
func TestHelpNamesEveryEnvironmentVariable(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	usage(&out)
	help := out.String()
	for _, env := range []string{"IP_POOL", "LISTEN_ADDR", "PROXY_USER", "PROXY_PASS", "DIAL_TIMEOUT", "DNS_TIMEOUT",
		"HANDSHAKE_TIMEOUT", "HEADER_TIMEOUT", "IDLE_TIMEOUT", "KEEPALIVE_TIMEOUT", "SHUTDOWN_TIMEOUT", "MAX_CONNS", "MAX_HEADER_BYTES"} {
		if !strings.Contains(help, "(env "+env+")") {
			t.Errorf("--help does not name %s", env)
		}
	}
	for _, want := range []string{"Listeners:", "Pool:", "Users:", "Limits and timeouts:", "Health:", "Observability:", "/debug/limits"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	// Every flag that reads a variable is read from it.
	fs := config.NewFlagSet("rotor")
	if fs.Lookup("dial-timeout").Annotations == nil {
		t.Fatal("flags carry no environment annotation")
	}
	cfg, err := config.Parse([]string{"--pool", "127.0.0.2"}, func(k string) string {
		return map[string]string{"DIAL_TIMEOUT": "3s", "MAX_HEADER_BYTES": "4096", "HEALTH_FALL": "7"}[k]
	})
	if err != nil || cfg.DialTimeout.String() != "3s" || cfg.MaxHeaderBytes != 4096 || cfg.HealthFall != 7 {
		t.Errorf("environment not read: %v %v %v %v", err, cfg.DialTimeout, cfg.MaxHeaderBytes, cfg.HealthFall)
	}
}

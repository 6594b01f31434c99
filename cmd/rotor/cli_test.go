package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/rotor-proxy/rotor/config"
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
		{[]string{"help", "nope"}, 2, "", `unknown command "nope"; commands: demo, check, passwd, version, help`, ""},
		{[]string{"bogus"}, 2, "", `rotor: unknown command "bogus"; commands: demo, check, passwd, version, help (rotor help)`, ""},
		{[]string{"--stratgy", "random"}, 2, "", "rotor: unknown flag --stratgy; did you mean --strategy? (rotor --help lists the flags)", ""},
		{[]string{"check", "--urll", "x"}, 2, "", "rotor check: unknown flag --urll; did you mean --url? (rotor check --help lists the flags)", ""},
		{[]string{"--frobnicate"}, 2, "", "unknown flag --frobnicate (rotor --help lists the flags)", "did you mean"},
		{[]string{"--pool", "127.0.0.2", "--strategy", "foo"}, 2, "", "want round-robin, random or least-recent", "["},
		{[]string{"demo", "extra"}, 2, "", "rotor demo takes no arguments", ""},
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

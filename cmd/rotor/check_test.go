package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// checkArgs runs rotor check with args, as after its flags are parsed.
func checkArgs(t *testing.T, args []string, out *bytes.Buffer) error {
	t.Helper()
	fs := checkFlags()
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return check(context.Background(), fs, nil, out, nil)
}

// rotor check against a loopback target that reports the peer address:
// one row per pool address, each seeing itself, exit 0; an address the
// remote does not see as itself (here: a target that always answers
// 127.0.0.9) fails with exit 1.
func TestCheck(t *testing.T) {
	t.Parallel()
	ht := httpTarget(t)
	var out bytes.Buffer
	args := []string{"--pool", strings.Join(poolAddrs, ","), "--url", "http://" + ht.Addr + "/ip", "--allow-dest", "127.0.0.0/8"}
	if err := checkArgs(t, args, &out); err != nil {
		t.Fatalf("check: %v\n%s", err, out.String())
	}
	rows := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(rows) != 1+len(poolAddrs) {
		t.Fatalf("got %d rows, want a header and %d:\n%s", len(rows), len(poolAddrs), out.String())
	}
	for i, a := range poolAddrs {
		f := strings.Fields(rows[i+1])
		if len(f) < 3 || f[0] != a || f[1] != a {
			t.Errorf("row %q, want source and remote both %s", rows[i+1], a)
		}
	}

	liar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("127.0.0.9\n")) }))
	defer liar.Close()
	out.Reset()
	err := checkArgs(t, []string{"--pool", "127.0.0.2", "--url", liar.URL, "--allow-dest", "127.0.0.0/8"}, &out)
	if err == nil || errors.Is(err, errConfig) || !strings.Contains(out.String(), "another address") {
		t.Fatalf("check against a NAT-like remote: %v\n%s", err, out.String())
	}

	// A URL that does not answer with an address (a web page) is named
	// as such, with a URL that does; what it sent is printed without its
	// control bytes.
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("<html>\x1b[31mhello</html>\n"))
	}))
	defer page.Close()
	out.Reset()
	err = checkArgs(t, []string{"--pool", "127.0.0.2", "--url", page.URL, "--allow-dest", "127.0.0.0/8"}, &out)
	if err == nil || !strings.Contains(out.String(), "the body is not an IP address: use a URL that answers with the caller's address") ||
		strings.Contains(out.String(), "\x1b") || strings.Contains(out.String(), "another address") {
		t.Fatalf("check against a web page: %v\n%s", err, out.String())
	}

	// Without --allow-dest the policy refuses loopback: a clear error per row.
	out.Reset()
	if err := checkArgs(t, args[:4], &out); err == nil || !strings.Contains(out.String(), "forbidden") {
		t.Fatalf("check to loopback without --allow-dest: %v\n%s", err, out.String())
	}
	if err := checkArgs(t, []string{"--pool", "127.0.0.2", "--url", "ftp://x"}, &out); !errors.Is(err, errConfig) {
		t.Fatalf("bad URL: %v, want a configuration error", err)
	}
}

// rotor check through upstream entries: each row is the entry (without
// its credentials) and what the remote saw through it.
func TestCheckThroughUpstreams(t *testing.T) {
	t.Parallel()
	ht := httpTarget(t)
	exit := exitRotor(t, "127.0.0.5")
	var out bytes.Buffer
	entry := "socks5://" + testUser + ":" + testPass + "@" + exit.sock
	args := []string{"--pool", "127.0.0.2," + entry, "--url", "http://" + ht.Addr + "/ip", "--allow-dest", "127.0.0.0/8"}
	if err := checkArgs(t, args, &out); err != nil {
		t.Fatalf("check: %v\n%s", err, out.String())
	}
	rows := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(rows) != 3 || !strings.HasPrefix(rows[2], "socks5://***@"+exit.sock) || strings.Fields(rows[2])[1] != "127.0.0.5" ||
		strings.Contains(out.String(), testPass) {
		t.Fatalf("rows:\n%s", out.String())
	}
}

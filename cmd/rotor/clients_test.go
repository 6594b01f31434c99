package main

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/rotor-proxy/rotor/internal/target"
)

// needBinary is the path of a program a test drives (a client, an
// upstream proxy, a load balancer). Without it the test skips, except in
// CI, where .ci/run installs it (Debian package pkg) and its absence is a
// failure.
func needBinary(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed; .ci/run must install %s", name, pkg)
		}
		t.Skipf("%s not installed (Debian package %s)", name, pkg)
	}
	return path
}

func needCurl(t *testing.T) string { t.Helper(); return needBinary(t, "curl", "curl") }

// tlsTarget is an HTTPS server on 127.0.0.1 that answers the peer IP.
func tlsTarget(t *testing.T) *httptest.Server {
	t.Helper()
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(target.PeerIP(r.RemoteAddr) + "\n"))
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Listener = ln
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

func TestCurl(t *testing.T) {
	t.Parallel()
	curl := needCurl(t)
	ht := httpTarget(t)
	tls := tlsTarget(t)
	r := startRotor(t)
	creds := testUser + ":" + testPass
	cases := []struct {
		name string
		args []string
	}{
		{"http -x", []string{"-x", "http://" + r.http, "--proxy-user", creds, "http://" + ht.Addr + "/ip"}},
		{"http -x creds in URL", []string{"-x", r.httpURL(), "http://" + ht.Addr + "/ip"}},
		{"https via CONNECT", []string{"-k", "-x", "http://" + r.http, "--proxy-user", creds, tls.URL + "/"}},
		{"https via CONNECT, name target", []string{"-k", "-x", "http://" + r.http, "--proxy-user", creds,
			strings.Replace(tls.URL, "127.0.0.1", "localhost", 1) + "/"}},
		{"--socks5", []string{"--socks5", r.sock, "--proxy-user", creds, "http://" + ht.Addr + "/ip"}},
		{"--socks5-hostname", []string{"--socks5-hostname", r.sock, "--proxy-user", creds,
			"http://localhost:" + port(ht.Addr) + "/ip"}},
		{"socks5h:// URL", []string{"-x", "socks5h://" + creds + "@" + r.sock, "http://localhost:" + port(ht.Addr) + "/ip"}},
	}
	seen := map[string]int{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 4; i++ {
				args := append([]string{"-sS", "--fail", "--max-time", "10", "--noproxy", ""}, tc.args...)
				out, err := exec.Command(curl, args...).CombinedOutput()
				if err != nil {
					t.Fatalf("curl %s: %v\n%s", strings.Join(args, " "), err, out)
				}
				got := strings.TrimSpace(string(out))
				if !slices.Contains(poolAddrs, got) {
					t.Fatalf("target saw %q, want a pool address", got)
				}
				seen[got]++
			}
		})
	}
	// Each case made 4 requests in a row: together, each address once per case.
	wantEach(t, seen, len(cases))

	t.Run("407 without credentials", func(t *testing.T) {
		out, _ := exec.Command(curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--noproxy", "",
			"-x", "http://"+r.http, "http://"+ht.Addr+"/ip").Output()
		if string(out) != "407" {
			t.Fatalf("status %s, want 407", out)
		}
	})
}

// Go's own proxy support: http:// (absolute-form for http, CONNECT for
// https) and socks5:// proxy URLs.
func TestGoNetHTTPClients(t *testing.T) {
	t.Parallel()
	ht := httpTarget(t)
	tlsT := tlsTarget(t)
	r := startRotor(t)
	ctx := context.Background()
	for _, proxyURL := range []string{r.httpURL(), r.socksURL()} {
		u, _ := url.Parse(proxyURL)
		tr := &http.Transport{Proxy: http.ProxyURL(u), TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}
		c := &http.Client{Transport: tr}
		for _, dst := range []string{"http://" + ht.Addr + "/ip", tlsT.URL + "/"} {
			t.Run(u.Scheme+" to "+dst[:5], func(t *testing.T) {
				seen := map[string]int{}
				for i := 0; i < 8; i++ {
					got, err := getVia(ctx, c, dst)
					if err != nil {
						t.Fatal(err)
					}
					seen[got]++
				}
				wantEach(t, seen, 2)
			})
		}
		tr.CloseIdleConnections()
	}
}

package main

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// python3WithClients is a Python that has httpx, aiohttp and requests
// (Debian's packages install them for /usr/bin/python3, which may not be
// first on PATH), or "" outside CI without one.
func python3WithClients(t *testing.T) string {
	t.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import httpx, aiohttp, requests").Run() == nil {
			return py
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("python3 with httpx, aiohttp and requests not installed; .ci/run must install python3-httpx python3-aiohttp python3-requests")
	}
	t.Skip("python3 with httpx, aiohttp and requests not installed")
	return ""
}

// addresses runs a client script and returns the source address each of
// its requests left from, one per line of its output.
func addresses(t *testing.T, argv ...string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, stderr)
	}
	return strings.Fields(string(out))
}

// distinct is how many different strings a holds.
func distinct(a []string) int {
	m := map[string]bool{}
	for _, s := range a {
		m[s] = true
	}
	return len(m)
}

// What README's Clients section says of real clients: one that reuses a
// CONNECT tunnel sends every request through it from one address; turned
// off as README says, each request takes the next address. Each client
// fetches an HTTPS target 4 times through a round-robin pool of 4.
func TestClientsReuse(t *testing.T) {
	t.Parallel()
	tlsT := tlsTarget(t)
	ht := httpTarget(t)
	const n = "4"
	type run struct {
		name           string
		shared, fresh  []string // command lines, without proxy, target and count
		tunnels        int      // addresses a shared client uses for 4 requests
		connectForHTTP bool
	}
	var runs []run
	if py := python3WithClients(t); py != "" {
		for _, lib := range []string{"httpx", "aiohttp", "requests"} {
			runs = append(runs, run{name: lib, shared: []string{py, "../../testdata/clients/reuse.py", lib, "shared"}, fresh: []string{py, "../../testdata/clients/reuse.py", lib, "fresh"}, tunnels: 1})
		}
	}
	dir, _ := filepath.Abs("../../testdata/clients")
	node, err := exec.LookPath("node")
	switch _, statErr := os.Stat(filepath.Join(dir, "node_modules", "undici")); {
	case err == nil && statErr == nil:
		runs = append(runs, run{name: "undici", shared: []string{node, filepath.Join(dir, "reuse.js"), "shared"}, fresh: []string{node, filepath.Join(dir, "reuse.js"), "fresh"},
			// undici opens a second tunnel for the second request and
			// then alternates between the two.
			tunnels: 2, connectForHTTP: true})
	case os.Getenv("CI") != "":
		t.Fatal("node or testdata/clients/node_modules missing; .ci/run must install nodejs and run npm ci there")
	}
	for _, rn := range runs {
		t.Run(rn.name, func(t *testing.T) {
			r := startRotor(t)
			got := addresses(t, append(rn.shared, r.httpURL(), tlsT.URL+"/", n)...)
			if len(got) != 4 || distinct(got) != rn.tunnels {
				t.Errorf("shared client: %v, want 4 requests over %d tunnels, from as many addresses", got, rn.tunnels)
			}
			got = addresses(t, append(rn.fresh, r.httpURL(), tlsT.URL+"/", n)...)
			if len(got) != 4 || distinct(got) != 4 {
				t.Errorf("reuse turned off: %v, want 4 addresses", got)
			}
			if rn.connectForHTTP {
				// undici's ProxyAgent tunnels plain http:// through
				// CONNECT too: one address per agent, as for HTTPS.
				got = addresses(t, append(rn.shared, r.httpURL(), "http://"+ht.Addr+"/ip", n)...)
				if len(got) != 4 || distinct(got) != rn.tunnels {
					t.Errorf("shared agent, plain http: %v, want %d tunnels", got, rn.tunnels)
				}
				if l := r.waitLog(`"proto":"connect"`, ht.Addr); !strings.Contains(l, `"target":"`+ht.Addr+`"`) {
					t.Errorf("plain http:// not tunnelled:\n%s", l)
				}
			}
		})
	}
	// Go: one Transport keeps the tunnel; DisableKeepAlives rotates.
	t.Run("go", func(t *testing.T) {
		r := startRotor(t)
		u, _ := url.Parse(r.httpURL())
		for _, keepAlive := range []bool{true, false} {
			tr := &http.Transport{Proxy: http.ProxyURL(u), TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: !keepAlive}
			var got []string
			for range 4 {
				a, err := getVia(context.Background(), &http.Client{Transport: tr}, tlsT.URL+"/")
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, a)
			}
			tr.CloseIdleConnections()
			if want := map[bool]int{true: 1, false: 4}[keepAlive]; distinct(got) != want {
				t.Errorf("keep-alive %v: %v, want %d addresses", keepAlive, got, want)
			}
		}
	})
}

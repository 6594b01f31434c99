package main

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
)

// A block in the pool gives every request, tunnel and SOCKS5 connection a
// fresh random address inside it, HTTP keep-alive included (no upstream
// connection is reused from a block); a session keeps one address; the
// metrics label is the block. 127.0.0.0/8 is routed local on Linux, so
// this runs without root; the IPv6 /64 test runs in a namespace.
func TestBlockPoolRotation(t *testing.T) {
	t.Parallel()
	const block = "127.1.0.0/16"
	ht := httpTarget(t)
	peer := tcpTarget(t, target.WritePeer)
	r := startRotor(t, func(c *config.Config) {
		c.Pool = []netip.Prefix{netip.MustParsePrefix(block)}
		c.MetricsListen = "127.0.0.1:0"
	})
	ctx := context.Background()
	client := proxyClient(r.httpURL(), 1) // one keep-alive client connection
	defer client.CloseIdleConnections()
	prefix := netip.MustParsePrefix(block)
	for _, proto := range []string{"http", "connect", "socks5"} {
		seen := map[string]bool{}
		for i := 0; i < 100; i++ {
			var got string
			var err error
			switch proto {
			case "http":
				got, err = getVia(ctx, client, "http://"+ht.Addr+"/ip")
			case "connect":
				got, err = connectVia(ctx, r.http, testUser, testPass, peer.Addr)
			case "socks5":
				got, err = socksVia(ctx, r.sock, testUser, testPass, peer.Addr)
			}
			if err != nil {
				t.Fatalf("%s %d: %v", proto, i, err)
			}
			a, err := netip.ParseAddr(got)
			if err != nil || !prefix.Contains(a) {
				t.Fatalf("%s %d left from %q, outside %s", proto, i, got, block)
			}
			seen[got] = true
		}
		// 100 draws from 65534 addresses: a repeat is rare (p ~ 0.07).
		if len(seen) < 98 {
			t.Errorf("%s: 100 requests from %d distinct addresses, want >= 98", proto, len(seen))
		}
	}

	// A session: one address in the block, over every protocol.
	user := testUser + "-session-cart7"
	sc := proxyClient("http://"+user+":"+testPass+"@"+r.http, 1)
	defer sc.CloseIdleConnections()
	seen := map[string]bool{}
	for i := 0; i < 4; i++ {
		for _, do := range r.paths(ctx, sc, user, testPass, "http://"+ht.Addr+"/ip", peer.Addr) {
			got, err := do()
			if err != nil {
				t.Fatal(err)
			}
			seen[got] = true
		}
	}
	if len(seen) != 1 {
		t.Errorf("session used %v, want one address", seen)
	}

	fams := scrape(t, r.metricsLn.Addr().String())
	for _, proto := range []string{"http", "connect", "socks5"} {
		want := 100.0
		if got, _ := value(fams, "rotor_source_requests_total", "source", block, "protocol", proto, "result", "ok"); got < want {
			t.Errorf("requests{source=%s,protocol=%s} = %v, want >= %v", block, proto, got, want)
		}
	}
	for name, f := range fams {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "source" && l.GetValue() != block {
					t.Errorf("%s labelled source=%q, want the block", name, l.GetValue())
				}
			}
		}
	}
}

// A block with no local route stops start-up with the command to run.
func TestBlockNotRoutedExits2(t *testing.T) {
	t.Parallel()
	var stderr strings.Builder
	code := run(context.Background(), []string{"--pool", "2001:db8:dead::/64", "--http-listen", "127.0.0.1:0", "--socks-listen", ""},
		&strings.Builder{}, &stderr, func(string) string { return "" })
	want := "ip -6 route add local 2001:db8:dead::/64 dev lo"
	if code != 2 || !strings.Contains(stderr.String(), want) {
		t.Fatalf("exit %d, stderr %q; want 2 and %q", code, stderr.String(), want)
	}
}

package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/serve"
)

// needNetns skips without root or iproute2, except in CI (root), where
// their absence is a failure.
func needNetns(t *testing.T) string {
	t.Helper()
	ip, err := exec.LookPath("ip")
	switch {
	case os.Geteuid() != 0:
		t.Skip("needs root to create a network namespace")
	case err != nil && os.Getenv("CI") != "":
		t.Fatal("ip (iproute2) not installed; .ci/run must install it")
	case err != nil:
		t.Skip("ip (iproute2) not installed")
	}
	return ip
}

func runCmd(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// nsPair is a network namespace and a veth pair into it, both removed at
// the end of the test.
type nsPair struct {
	ip          string // the ip command
	ns          string
	here, there string // near end (this namespace), far end (in ns)
}

// newNSPair makes the namespace and the pair and brings both ends (and
// the namespace's loopback) up. tag keeps names apart between tests.
func newNSPair(t *testing.T, tag string) *nsPair {
	t.Helper()
	ip := needNetns(t)
	p := &nsPair{ip: ip, ns: fmt.Sprintf("rotor-%s-%d", tag, os.Getpid()),
		here: fmt.Sprintf("rt%s%da", tag, os.Getpid()%100000), there: fmt.Sprintf("rt%s%db", tag, os.Getpid()%100000)}
	runCmd(t, ip, "netns", "add", p.ns)
	t.Cleanup(func() { _ = exec.Command(ip, "netns", "del", p.ns).Run() })
	runCmd(t, ip, "link", "add", p.here, "type", "veth", "peer", "name", p.there, "netns", p.ns)
	t.Cleanup(func() { _ = exec.Command(ip, "link", "del", p.here).Run() })
	runCmd(t, ip, "link", "set", p.here, "up")
	runCmd(t, ip, "-n", p.ns, "link", "set", p.there, "up")
	runCmd(t, ip, "-n", p.ns, "link", "set", "lo", "up")
	return p
}

// vethNS is newNSPair with addr (CIDR) on the near end; it returns the ip
// command and the near end's name.
func vethNS(t *testing.T, tag, addr string) (ip, here string) {
	t.Helper()
	p := newNSPair(t, tag)
	runCmd(t, p.ip, "addr", "add", addr, "dev", p.here)
	return p.ip, p.here
}

// A target whose SYNs go unanswered: a veth into a namespace this test
// creates, with no address on the far end, so the SYN waits for an ARP
// reply that never comes and no packet leaves the host. The dial must end
// at the dial timeout with 504 over HTTP and reply 0x04 over SOCKS5.
func TestBlackholedTargetTimesOut(t *testing.T) {
	vethNS(t, "v", "198.18.7.1/24")

	r := startRotor(t, func(c *config.Config) {
		c.Pool = []netip.Prefix{netip.MustParsePrefix("198.18.7.1/32")}
		c.DialTimeout = 500 * time.Millisecond
	})
	ctx := context.Background()
	const dst = "198.18.7.2:80"
	start := time.Now()
	if _, err := connectVia(ctx, r.http, testUser, testPass, dst); err == nil || !strings.Contains(err.Error(), "504") {
		t.Fatalf("CONNECT to a black hole: %v, want 504", err)
	}
	if d := time.Since(start); d < 400*time.Millisecond || d > 5*time.Second {
		t.Fatalf("504 after %s, want the 500ms dial timeout", d)
	}
	if _, err := socksVia(ctx, r.sock, testUser, testPass, dst); err == nil || !strings.Contains(err.Error(), "host unreachable") {
		t.Fatalf("SOCKS5 to a black hole: %v, want reply 04 (host unreachable)", err)
	}
	if _, err := getVia(ctx, proxyClient(r.httpURL(), 1), "http://"+dst+"/"); err == nil || !strings.Contains(err.Error(), "504") {
		t.Fatalf("GET via HTTP to a black hole: %v, want 504", err)
	}
	if n := waitCount(func() int64 { return r.hits().Load(serve.DialTimeout) }, 3); n != 3 {
		t.Fatalf("counted %d dial timeouts, want 3", n)
	}
}

// An address removed from the host while rotor runs (ip addr del) leaves
// rotation, and comes back within a health interval of being re-added.
// Passive (no health target): it leaves at its first failed bind and
// that request is retried from another address, so no client sees an
// error. Active (--health-target): the next probe takes it out before any
// request tries it.
func TestRemovedAddressLeavesRotation(t *testing.T) {
	for _, mode := range []string{"passive", "active"} {
		t.Run(mode, func(t *testing.T) {
			ip, here := vethNS(t, mode[:1], "198.18.9.1/24")
			peer := tcpTarget(t, target.WritePeer)
			const interval = 200 * time.Millisecond
			r := startRotor(t, func(c *config.Config) {
				c.Pool = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32"), netip.MustParsePrefix("198.18.9.1/32")}
				c.HealthInterval, c.HealthFall, c.HealthRise = interval, 3, 1
				c.HealthTimeout = 10 * time.Second // a passing probe must not time out on a loaded machine
				if mode == "active" {
					c.HealthTarget = peer.Addr
				}
			})
			ctx := context.Background()
			both := func(when string) {
				t.Helper()
				seen := map[string]int{}
				for i := 0; i < 4; i++ {
					got, err := socksVia(ctx, r.sock, testUser, testPass, peer.Addr)
					if err != nil {
						t.Fatal(err)
					}
					seen[got]++
				}
				if seen["127.0.0.2"] != 2 || seen["198.18.9.1"] != 2 {
					t.Fatalf("%s: %v, want both addresses twice", when, seen)
				}
			}
			both("before removal")

			runCmd(t, ip, "addr", "del", "198.18.9.1/24", "dev", here)
			removed := time.Now()
			if mode == "active" {
				// One probe round, whatever the failure count: a local
				// failure takes the address out at once.
				if !strings.Contains(r.waitLog("out of rotation"), "198.18.9.1") {
					t.Fatal("removed address not taken out by the health probe")
				}
				if d := time.Since(removed); d > 2*interval+time.Second {
					t.Errorf("taken out %s after removal, want within about one %s interval", d, interval)
				}
			}
			client := proxyClient(r.httpURL(), 1)
			defer client.CloseIdleConnections()
			ht := httpTarget(t)
			for i := 0; i < 12; i++ {
				var got string
				var err error
				switch i % 3 {
				case 0:
					got, err = socksVia(ctx, r.sock, testUser, testPass, peer.Addr)
				case 1:
					got, err = connectVia(ctx, r.http, testUser, testPass, peer.Addr)
				case 2:
					got, err = getVia(ctx, client, "http://"+ht.Addr+"/ip")
				}
				if err != nil {
					t.Fatalf("request %d after the address was removed: %v", i, err)
				}
				if got != "127.0.0.2" {
					t.Fatalf("request %d left from %s, want 127.0.0.2", i, got)
				}
			}
			if !strings.Contains(r.waitLog("out of rotation"), "198.18.9.1") {
				t.Error("removal not logged")
			}

			runCmd(t, ip, "addr", "add", "198.18.9.1/24", "dev", here)
			readded := time.Now()
			r.waitLog("back in rotation")
			if d := time.Since(readded); d > 2*interval+time.Second {
				t.Errorf("back %s after being re-added, want within about one %s interval", d, interval)
			}
			both("after re-adding")
		})
	}
}

// Removing a pool address from the host takes it out of rotation within
// about a second, from the kernel's address event alone (no request, no
// probe: the health interval is a minute), and closes its warm upstream
// connections, so that no safe-to-retry request fails; adding it back
// brings it back as fast.
func TestRemovedAddressFollowsKernelEvents(t *testing.T) {
	ip, here := vethNS(t, "n", "198.18.9.1/24")
	r := startRotor(t, func(c *config.Config) {
		c.Pool = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32"), netip.MustParsePrefix("198.18.9.1/32")}
		c.HealthInterval, c.HealthFall, c.HealthRise = time.Minute, 3, 1
	})
	ctx := context.Background()
	client := proxyClient(r.httpURL(), 1)
	defer client.CloseIdleConnections()
	ht := httpTarget(t)
	seen := map[string]int{}
	for range 6 { // warm: idle upstream connections from both sources
		got, err := getVia(ctx, client, "http://"+ht.Addr+"/ip")
		if err != nil {
			t.Fatal(err)
		}
		seen[got]++
	}
	if seen["127.0.0.2"] != 3 || seen["198.18.9.1"] != 3 {
		t.Fatalf("warm-up: %v, want both addresses", seen)
	}
	runCmd(t, ip, "addr", "del", "198.18.9.1/24", "dev", here)
	removed := time.Now()
	if !strings.Contains(r.waitLog("out of rotation"), "198.18.9.1") {
		t.Fatal("removal not logged")
	}
	if d := time.Since(removed); d > 1500*time.Millisecond {
		t.Errorf("taken out %s after removal, want within about a second", d)
	}
	for i := range 12 {
		got, err := getVia(ctx, client, "http://"+ht.Addr+"/ip")
		if err != nil {
			t.Fatalf("request %d after the address was removed: %v", i, err)
		}
		if got != "127.0.0.2" {
			t.Fatalf("request %d left from %s, want 127.0.0.2", i, got)
		}
	}
	runCmd(t, ip, "addr", "add", "198.18.9.1/24", "dev", here)
	readded := time.Now()
	r.waitLog("back in rotation")
	if d := time.Since(readded); d > 1500*time.Millisecond {
		t.Errorf("back %s after being re-added, want within about a second", d)
	}
	seen = map[string]int{}
	for range 4 {
		got, err := getVia(ctx, client, "http://"+ht.Addr+"/ip")
		if err != nil {
			t.Fatal(err)
		}
		seen[got]++
	}
	if seen["198.18.9.1"] == 0 {
		t.Fatalf("after re-adding: %v, want the address used again", seen)
	}
}

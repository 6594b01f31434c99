package main

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/pool"
)

// dualTargets starts serve on 127.0.0.1 and [::1] on one port, so that a
// name with A and AAAA answers reaches it over either family. It returns
// the port.
func dualTargets(t *testing.T, serve func(addr string) (*target.Server, error)) string {
	t.Helper()
	for try := 0; try < 20; try++ {
		v4 := started(t)(serve("127.0.0.1:0"))
		_, port, _ := net.SplitHostPort(v4.Addr)
		v6, err := serve("[::1]:" + port)
		if err == nil {
			t.Cleanup(func() { v6.Close() })
			return port
		}
	}
	t.Fatal("no port free on both 127.0.0.1 and ::1")
	return ""
}

func needIPv6Loopback(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ln.Close()
}

// A pool with an IPv4 and an IPv6 address and targets by name with only
// A, only AAAA, or both: each connects over a family it has, from a
// source of that family; both prefers IPv6 (or IPv4 with
// --prefer-family ipv4) and falls back to the other at once when the
// first is refused. Over SOCKS5 (by name), CONNECT and HTTP forwarding.
func TestDualStackNames(t *testing.T) {
	t.Parallel()
	needIPv6Loopback(t)
	tcpPort := dualTargets(t, func(a string) (*target.Server, error) { return target.TCP(a, target.WritePeer) })
	httpPort := dualTargets(t, target.HTTP)
	// A port open on 127.0.0.1 only: its AAAA answer is refused.
	v4only := tcpTarget(t, target.WritePeer)
	_, v4onlyPort, _ := net.SplitHostPort(v4only.Addr)
	res := target.FakeResolver(map[string][]netip.Addr{
		"v4.test":   {netip.MustParseAddr("127.0.0.1")},
		"v6.test":   {netip.MustParseAddr("::1")},
		"both.test": {netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
	})
	ctx := context.Background()
	for _, prefer := range []pool.Family{pool.IPv6, pool.IPv4} {
		r := startRotorResolver(t, res, func(c *config.Config) {
			c.Pool = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32"), netip.MustParsePrefix("::1/128")}
			c.Prefer = prefer
		})
		client := proxyClient(r.httpURL(), 1)
		bothWant := "::1"
		if prefer == pool.IPv4 {
			bothWant = "127.0.0.2"
		}
		for _, tc := range []struct{ host, want string }{{"v4.test", "127.0.0.2"}, {"v6.test", "::1"}, {"both.test", bothWant}} {
			for i := 0; i < 4; i++ { // rotation must not matter
				if got, err := socksVia(ctx, r.sock, testUser, testPass, net.JoinHostPort(tc.host, tcpPort)); err != nil || got != tc.want {
					t.Errorf("prefer %s: SOCKS5 to %s: %q, %v; want %s", prefer, tc.host, got, err, tc.want)
				}
				if got, err := connectVia(ctx, r.http, testUser, testPass, net.JoinHostPort(tc.host, tcpPort)); err != nil || got != tc.want {
					t.Errorf("prefer %s: CONNECT to %s: %q, %v; want %s", prefer, tc.host, got, err, tc.want)
				}
				if got, err := getVia(ctx, client, "http://"+net.JoinHostPort(tc.host, httpPort)+"/ip"); err != nil || got != tc.want {
					t.Errorf("prefer %s: GET %s: %q, %v; want %s", prefer, tc.host, got, err, tc.want)
				}
			}
		}
		// both.test on a port only IPv4 serves: with IPv6 preferred its
		// refusal starts IPv4 at once.
		if got, err := socksVia(ctx, r.sock, testUser, testPass, net.JoinHostPort("both.test", v4onlyPort)); err != nil || got != "127.0.0.2" {
			t.Errorf("prefer %s: fallback to IPv4: %q, %v", prefer, got, err)
		}
		client.CloseIdleConnections()
	}
}

// With a pool of one family, a target with no address in it fails with
// the documented errors: 502 over HTTP, reply 0x04 over SOCKS5, whether
// it is a name or an address literal.
func TestDualStackImpossible(t *testing.T) {
	t.Parallel()
	needIPv6Loopback(t)
	res := target.FakeResolver(map[string][]netip.Addr{
		"v4.test": {netip.MustParseAddr("127.0.0.1")},
		"v6.test": {netip.MustParseAddr("::1")},
	})
	ctx := context.Background()
	for _, tc := range []struct {
		pool    string
		targets []string
	}{
		{"127.0.0.2/32", []string{"v6.test:80", "[::1]:80"}},
		{"::1/128", []string{"v4.test:80", "127.0.0.1:80"}},
	} {
		r := startRotorResolver(t, res, func(c *config.Config) { c.Pool = []netip.Prefix{netip.MustParsePrefix(tc.pool)} })
		client := proxyClient(r.httpURL(), 1)
		for _, dst := range tc.targets {
			if _, err := connectVia(ctx, r.http, testUser, testPass, dst); err == nil || !strings.Contains(err.Error(), "502") {
				t.Errorf("pool %s, CONNECT %s: %v, want 502", tc.pool, dst, err)
			}
			if _, err := getVia(ctx, client, "http://"+dst+"/"); err == nil || !strings.Contains(err.Error(), "502") {
				t.Errorf("pool %s, GET %s: %v, want 502", tc.pool, dst, err)
			}
			if _, err := socksVia(ctx, r.sock, testUser, testPass, dst); err == nil || !strings.Contains(err.Error(), "host unreachable") {
				t.Errorf("pool %s, SOCKS5 %s: %v, want reply 04 (host unreachable)", tc.pool, dst, err)
			}
		}
		client.CloseIdleConnections()
	}
	// A mixed pool and a name with no answer at all: 502 and 0x04 too.
	r := startRotorResolver(t, res, func(c *config.Config) {
		c.Pool = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32"), netip.MustParsePrefix("::1/128")}
	})
	if _, err := connectVia(ctx, r.http, testUser, testPass, "nowhere.test:80"); err == nil || !strings.Contains(err.Error(), "502") {
		t.Errorf("mixed pool, CONNECT to an unknown name: %v, want 502", err)
	}
	if _, err := socksVia(ctx, r.sock, testUser, testPass, "nowhere.test:80"); err == nil || !strings.Contains(err.Error(), "host unreachable") {
		t.Errorf("mixed pool, SOCKS5 to an unknown name: %v, want 0x04", err)
	}
}

// A name that does not exist says "no such host" (502 body and log line),
// apart from a name with no address of the pool's families, in a
// single-family pool and a mixed one.
func TestNoSuchHostMessage(t *testing.T) {
	t.Parallel()
	needIPv6Loopback(t)
	res := target.FakeResolver(map[string][]netip.Addr{"v6.test": {netip.MustParseAddr("::1")}})
	for _, pools := range [][]string{{"127.0.0.2/32"}, {"127.0.0.2/32", "::1/128"}} {
		r := startRotorResolver(t, res, func(c *config.Config) {
			c.Pool = nil
			for _, p := range pools {
				c.Pool = append(c.Pool, netip.MustParsePrefix(p))
			}
		})
		client := proxyClient(r.httpURL(), 1)
		_, err := getVia(context.Background(), client, "http://nosuch.test/")
		if err == nil || !strings.Contains(err.Error(), `502 Bad Gateway: rotor: cannot reach "nosuch.test:80": no such host`) {
			t.Errorf("pool %v, GET a name that does not exist: %v", pools, err)
		}
		client.CloseIdleConnections()
		if l := r.waitLog("nosuch.test"); !strings.Contains(l, "resolve nosuch.test: no such host") || strings.Contains(l, "for 4 source") {
			t.Errorf("pool %v: log lines:\n%s", pools, l)
		}
		if len(pools) == 1 {
			_, err := getVia(context.Background(), client, "http://v6.test/")
			if err == nil || !strings.Contains(err.Error(), "does not resolve to an address of the pool's families") {
				t.Errorf("an IPv6-only name from an IPv4 pool: %v", err)
			}
			if l := r.waitLog("v6.test"); !strings.Contains(l, "it has IPv6 addresses only, and source 127.0.0.2 is IPv4") {
				t.Errorf("log lines:\n%s", l)
			}
		}
	}
}

package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
)

// With the default policy a client cannot reach the host's own services
// through rotor, whatever it calls them, and nothing reaches the target.
func TestDefaultPolicyRefusesLoopback(t *testing.T) {
	t.Parallel()
	tt := tcpTarget(t, target.WritePeer)
	ht := httpTarget(t)
	r := startRotor(t, func(c *config.Config) { c.AllowDest = nil })
	ctx := context.Background()
	port := netip.MustParseAddrPort(tt.Addr).Port()
	client := proxyClient(r.httpURL(), 1)
	defer client.CloseIdleConnections()

	for _, host := range []string{"127.0.0.1", "127.1", "2130706433", "0x7f000001", "[::ffff:127.0.0.1]", "localhost"} {
		addr := fmt.Sprintf("%s:%d", host, port)
		if _, err := connectVia(ctx, r.http, testUser, testPass, addr); err == nil || !strings.Contains(err.Error(), "403") {
			t.Errorf("CONNECT %s: %v, want 403", addr, err)
		}
		if _, err := socksVia(ctx, r.sock, testUser, testPass, addr); err == nil || !strings.Contains(err.Error(), "not allowed by ruleset") {
			t.Errorf("SOCKS5 %s: %v, want reply 02", addr, err)
		}
	}
	if _, err := getVia(ctx, client, "http://"+ht.Addr+"/ip"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("GET via HTTP proxy: %v, want 403", err)
	}
	// Rotor's own listener is refused even when loopback is allowed.
	r2 := startRotor(t)
	if _, err := connectVia(ctx, r2.http, testUser, testPass, r2.http); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("CONNECT to rotor itself: %v, want 403", err)
	}
	if n := tt.Conns.Load() + ht.Conns.Load(); n != 0 {
		t.Fatalf("forbidden requests reached the targets: %d connections", n)
	}
	if !strings.Contains(r.waitLog("destination forbidden by policy"), "destination forbidden by policy") {
		t.Error("refusals not logged")
	}
}

// refusedEverywhere fails unless dst is refused by the policy over
// CONNECT (403) and over SOCKS5 (reply 0x02).
func refusedEverywhere(t *testing.T, r *rotor, dst string) {
	t.Helper()
	ctx := context.Background()
	if _, err := connectVia(ctx, r.http, testUser, testPass, dst); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("CONNECT %s: %v, want 403", dst, err)
	}
	if _, err := socksVia(ctx, r.sock, testUser, testPass, dst); err == nil || !strings.Contains(err.Error(), "not allowed by ruleset") {
		t.Errorf("SOCKS5 %s: %v, want reply 02", dst, err)
	}
}

// IPv6 addresses that carry a forbidden IPv4 address are refused as
// literals (CONNECT, absolute-form, SOCKS5 ATYP 4) and as AAAA answers,
// from an IPv6 source: on a subnet with a NAT64 gateway or a 6to4 relay
// they would reach the IPv4 address.
func TestEmbeddedIPv4Refused(t *testing.T) {
	t.Parallel()
	forms := []string{"64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "64:ff9b:1:7f00:1::", "2002:7f00:1::1", "::ffff:0:127.0.0.1", "::127.0.0.1", "2001:0:7f00:1::cb00:7109"}
	hosts := map[string][]netip.Addr{}
	for i, a := range forms {
		hosts[fmt.Sprintf("embed%d.test", i)] = []netip.Addr{netip.MustParseAddr(a)}
	}
	r := startRotorResolver(t, target.FakeResolver(hosts), func(c *config.Config) {
		c.AllowDest = nil
		c.Pool = []netip.Prefix{netip.MustParsePrefix("::1/128")}
	})
	client := proxyClient(r.httpURL(), 1)
	defer client.CloseIdleConnections()
	for i, a := range forms {
		lit := "[" + a + "]:80"
		refusedEverywhere(t, r, lit)
		refusedEverywhere(t, r, fmt.Sprintf("embed%d.test:80", i))
		if _, err := getVia(context.Background(), client, "http://"+lit+"/"); err == nil || !strings.Contains(err.Error(), "403") {
			t.Errorf("GET http://%s/: %v, want 403", lit, err)
		}
	}
	if !strings.Contains(r.waitLog("carries the IPv4 address"), "carries the IPv4 address") {
		t.Error("refusal does not name the embedded address")
	}
}

// 0.0.0.0 and :: are never dialled, even with every address allowed:
// Linux connects to them as to the host itself, which put rotor's own
// listener (and any wildcard-bound service) in reach.
func TestUnspecifiedNeverDialled(t *testing.T) {
	t.Parallel()
	tt := started(t)(target.TCP(":0", target.WritePeer))
	r := startRotor(t, func(c *config.Config) {
		c.AllowDest = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	})
	tport := port(tt.Addr)
	for _, dst := range []string{"0.0.0.0:" + tport, "[::]:" + tport, "0.0.0.0:" + port(r.http), "[::ffff:0.0.0.0]:" + port(r.sock), "0:" + tport} {
		refusedEverywhere(t, r, dst)
	}
	if n := tt.Conns.Load(); n != 0 {
		t.Fatalf("the unspecified address reached the target %d times", n)
	}
	// The same target by its loopback address is allowed: the refusal
	// is the unspecified address's, not the port's.
	if got, err := connectVia(context.Background(), r.http, testUser, testPass, "127.0.0.1:"+tport); err != nil || got == "" {
		t.Fatalf("CONNECT 127.0.0.1:%s: %q, %v", tport, got, err)
	}
}

// Every address configured on the host is refused, on every port, so a
// service bound to the wildcard address (a database, an admin port, rotor's
// metrics) is out of reach by the host's public address; the set follows
// the kernel's address events, and --allow-dest opens one address.
func TestHostAddressesRefused(t *testing.T) {
	ip, here := vethNS(t, "h", "198.18.10.1/24")
	tt := started(t)(target.TCP(":0", target.WritePeer))
	ht := started(t)(target.HTTP(":0"))
	tport := port(tt.Addr)
	r := startRotor(t, func(c *config.Config) {
		c.DialTimeout = 300 * time.Millisecond
		c.MetricsListen = "0.0.0.0:0"
	})
	client := proxyClient(r.httpURL(), 1)
	defer client.CloseIdleConnections()
	ctx := context.Background()

	refusedEverywhere(t, r, "198.18.10.1:"+tport)
	for _, u := range []string{"http://198.18.10.1:" + port(ht.Addr) + "/ip", "http://198.18.10.1:" + port(r.instance.metricsLn.Addr().String()) + "/metrics"} {
		if _, err := getVia(ctx, client, u); err == nil || !strings.Contains(err.Error(), "403") {
			t.Errorf("GET %s: %v, want 403", u, err)
		}
	}
	if n := tt.Conns.Load() + ht.Conns.Load(); n != 0 {
		t.Fatalf("the host's own address reached its services %d times", n)
	}

	// An address added later is refused as soon as the kernel says so,
	// and no longer once it is removed (the dial then fails: nothing
	// answers for it on the veth).
	runCmd(t, ip, "addr", "add", "198.18.10.7/32", "dev", here)
	waitStatus(t, r, "198.18.10.7:"+tport, func(err error) bool { return err != nil && strings.Contains(err.Error(), "403") })
	runCmd(t, ip, "addr", "del", "198.18.10.7/32", "dev", here)
	waitStatus(t, r, "198.18.10.7:"+tport, func(err error) bool { return err != nil && !strings.Contains(err.Error(), "403") })
	// IPv6 too (nodad: usable at once, without duplicate detection).
	runCmd(t, ip, "addr", "add", "2001:db8:77::1/128", "dev", here, "nodad")
	waitStatus(t, r, "[2001:db8:77::1]:"+tport, func(err error) bool { return err != nil && strings.Contains(err.Error(), "403") })
	if _, err := socksVia(ctx, r.sock, testUser, testPass, "[2001:db8:77::1]:"+tport); err == nil || !strings.Contains(err.Error(), "not allowed by ruleset") {
		t.Errorf("SOCKS5 to the host's IPv6 address: %v, want reply 02", err)
	}
	if n := tt.Conns.Load(); n != 0 {
		t.Fatalf("the host's own addresses reached the target %d times", n)
	}

	// --allow-dest opens one address of the host, and only that one.
	open := startRotor(t, func(c *config.Config) {
		c.AllowDest = append(c.AllowDest, netip.MustParsePrefix("198.18.10.1/32"))
	})
	if got, err := connectVia(ctx, open.http, testUser, testPass, "198.18.10.1:"+tport); err != nil || got == "" {
		t.Fatalf("CONNECT to an allowed host address: %q, %v", got, err)
	}
	runCmd(t, ip, "addr", "add", "198.18.10.8/32", "dev", here)
	waitStatus(t, open, "198.18.10.8:"+tport, func(err error) bool { return err != nil && strings.Contains(err.Error(), "403") })
}

// waitStatus retries a CONNECT to dst for up to 5 s until ok accepts its
// result: the kernel's address events arrive asynchronously.
func waitStatus(t *testing.T, r *rotor, dst string, ok func(error) bool) {
	t.Helper()
	var err error
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if _, err = connectVia(context.Background(), r.http, testUser, testPass, dst); ok(err) {
			return
		}
	}
	t.Fatalf("CONNECT %s: still %v after 5 s", dst, err)
}

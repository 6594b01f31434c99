package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
)

// With the default policy a client cannot reach the host's own services
// through rotor, whatever it calls them, and nothing reaches the target.
func TestDefaultPolicyRefusesLoopback(t *testing.T) {
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

package main

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
)

// A mixed pool: IPv6 targets (SOCKS5 ATYP 0x04, CONNECT [::1]:port, and
// absolute-form http://[::1]:port) leave from the IPv6 source, IPv4
// targets from the IPv4 ones.
func TestIPv6Targets(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ln.Close()
	v6 := started(t)(target.TCP("[::1]:0", target.WritePeer))
	v6http := started(t)(target.HTTP("[::1]:0"))
	v4 := tcpTarget(t, target.WritePeer)
	r := startRotor(t, func(c *config.Config) { c.Pool = append(c.Pool, netip.MustParsePrefix("::1/128")) })
	ctx := context.Background()
	client := proxyClient(r.httpURL(), 1)
	defer client.CloseIdleConnections()

	for i := 0; i < 3; i++ {
		if got, err := socksVia(ctx, r.sock, testUser, testPass, v6.Addr); err != nil || got != "::1" {
			t.Fatalf("SOCKS5 to %s: %q, %v; want ::1", v6.Addr, got, err)
		}
		if got, err := connectVia(ctx, r.http, testUser, testPass, v6.Addr); err != nil || got != "::1" {
			t.Fatalf("CONNECT to %s: %q, %v; want ::1", v6.Addr, got, err)
		}
		if got, err := getVia(ctx, client, "http://"+v6http.Addr+"/ip"); err != nil || got != "::1" {
			t.Fatalf("GET via HTTP to %s: %q, %v; want ::1", v6http.Addr, got, err)
		}
		if got, err := socksVia(ctx, r.sock, testUser, testPass, v4.Addr); err != nil || !netip.MustParseAddr(got).Is4() {
			t.Fatalf("SOCKS5 to %s: %q, %v; want an IPv4 source", v4.Addr, got, err)
		}
	}

	// The success reply to an IPv6 request carries an IPv6 bound address.
	out := socksRaw(t, r.sock, append(socksHello(), socksConnect(netip.MustParseAddrPort(v6.Addr))...))
	if len(out) < 4+22 || out[5] != 0 || out[7] != 4 || netip.AddrFrom16([16]byte(out[8:24])) != netip.MustParseAddr("::1") {
		t.Fatalf("got % x, want success with ATYP 04 and bound address ::1", out)
	}
}

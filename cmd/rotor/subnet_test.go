package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/pool"
)

// listenInNS opens a TCP listener inside network namespace ns; this
// process serves it like any other.
func listenInNS(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	inNS(t, ns, func() { ln, err = net.Listen("tcp", addr) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// inNS runs fn on a thread inside network namespace ns: sockets fn opens
// stay in ns. fn must not block.
func inNS(t *testing.T, ns string, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		// Locked and never unlocked if the thread cannot go back.
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		nsf, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer nsf.Close()
		if err := unix.Setns(int(nsf.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns back: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// serveInNS serves target.HTTP (GET /ip) and target.WritePeer on
// listeners opened in ns. A dual-stack listener's IPv4 peers report as
// IPv4: net prints IPv4-mapped addresses in dotted form.
func serveInNS(t *testing.T, ns, httpAddr, tcpAddr string) (httpA, tcpA string) {
	t.Helper()
	h := target.ServeHTTP(listenInNS(t, ns, httpAddr))
	t.Cleanup(func() { h.Close() })
	w := target.Serve(listenInNS(t, ns, tcpAddr), target.WritePeer)
	t.Cleanup(func() { w.Close() })
	return h.Addr, w.Addr
}

// subnetNS builds the routed-/64 set-up README documents, between this
// namespace (rotor) and a namespace it creates (targets):
//
//	rotor side: 2001:db8:ff::1/64 and 198.18.30.1/24 on the veth,
//	            ip -6 route add local 2001:db8:1::/64 dev lo
//	far side:   2001:db8:ff::2/64 and 198.18.30.2/24,
//	            ip -6 route add 2001:db8:1::/64 via 2001:db8:ff::1
func subnetNS(t *testing.T, tag string) *nsPair {
	t.Helper()
	p := newNSPair(t, tag)
	runCmd(t, p.ip, "-6", "addr", "add", "2001:db8:ff::1/64", "dev", p.here, "nodad")
	runCmd(t, p.ip, "addr", "add", "198.18.30.1/24", "dev", p.here)
	runCmd(t, p.ip, "-n", p.ns, "-6", "addr", "add", "2001:db8:ff::2/64", "dev", p.there, "nodad")
	runCmd(t, p.ip, "-n", p.ns, "addr", "add", "198.18.30.2/24", "dev", p.there)
	runCmd(t, p.ip, "-6", "route", "add", "local", "2001:db8:1::/64", "dev", "lo")
	t.Cleanup(func() { _ = exec.Command(p.ip, "-6", "route", "del", "local", "2001:db8:1::/64", "dev", "lo").Run() })
	runCmd(t, p.ip, "-n", p.ns, "-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:ff::1")
	return p
}

var subnetBlock = netip.MustParsePrefix("2001:db8:1::/64")

// A routed /64 in the pool: 1,000 requests each over HTTP forwarding,
// CONNECT and SOCKS5 to a target in another namespace come from at least
// 990 distinct addresses each, all inside the block.
func TestSubnetRotation(t *testing.T) {
	p := subnetNS(t, "s")
	httpA, tcpA := serveInNS(t, p.ns, "[2001:db8:ff::2]:0", "[2001:db8:ff::2]:0")
	r := startRotor(t, func(c *config.Config) { c.Pool = []netip.Prefix{subnetBlock} })
	ctx := context.Background()
	const n, workers = 1000, 8
	for _, proto := range []string{"http", "connect", "socks5"} {
		var mu sync.Mutex
		seen := map[string]int{}
		var failed atomic.Int64
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				client := proxyClient(r.httpURL(), 1)
				defer client.CloseIdleConnections()
				for next.Add(1) <= n {
					var got string
					var err error
					switch proto {
					case "http":
						got, err = getVia(ctx, client, "http://"+httpA+"/ip")
					case "connect":
						got, err = connectVia(ctx, r.http, testUser, testPass, tcpA)
					case "socks5":
						got, err = socksVia(ctx, r.sock, testUser, testPass, tcpA)
					}
					if err != nil {
						if failed.Add(1) < 5 {
							t.Errorf("%s: %v", proto, err)
						}
						continue
					}
					mu.Lock()
					seen[got]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		outside := 0
		for a := range seen {
			if ip, err := netip.ParseAddr(a); err != nil || !subnetBlock.Contains(ip) {
				outside++
				t.Errorf("%s: request left from %q, outside %s", proto, a, subnetBlock)
			}
		}
		t.Logf("%s: %d requests, %d distinct source addresses, %d failed", proto, n, len(seen), failed.Load())
		if len(seen) < 990 || failed.Load() > 0 || outside > 0 {
			t.Errorf("%s: %d distinct addresses (want >= 990), %d failures, %d outside", proto, len(seen), failed.Load(), outside)
		}
	}
}

// A dual-stack pool (an IPv4 address and the IPv6 block) and targets in
// the namespace by name with only A, only AAAA, or both: each connects
// with a family it has, IPv6 first; curl with -x, -p -x and
// --socks5-hostname reaches the IPv6-only name that only rotor resolves.
func TestSubnetDualStack(t *testing.T) {
	p := subnetNS(t, "d")
	// One dual-stack listener in the namespace serves both families.
	httpA, tcpA := serveInNS(t, p.ns, "[::]:0", "[::]:0")
	_, httpPort, _ := net.SplitHostPort(httpA)
	_, tcpPort, _ := net.SplitHostPort(tcpA)
	res := target.FakeResolver(map[string][]netip.Addr{
		"v4.ns.test":   {netip.MustParseAddr("198.18.30.2")},
		"v6.ns.test":   {netip.MustParseAddr("2001:db8:ff::2")},
		"both.ns.test": {netip.MustParseAddr("198.18.30.2"), netip.MustParseAddr("2001:db8:ff::2")},
	})
	r := startRotorResolver(t, res, func(c *config.Config) {
		c.Pool = []netip.Prefix{netip.MustParsePrefix("198.18.30.1/32"), subnetBlock}
	})
	ctx := context.Background()
	client := proxyClient(r.httpURL(), 1)
	defer client.CloseIdleConnections()
	in6 := func(s string) bool { a, err := netip.ParseAddr(s); return err == nil && subnetBlock.Contains(a) }
	is4 := func(s string) bool { return s == "198.18.30.1" }
	for _, tc := range []struct {
		host string
		ok   func(string) bool
	}{{"v4.ns.test", is4}, {"v6.ns.test", in6}, {"both.ns.test", in6}, {"198.18.30.2", is4}, {"2001:db8:ff::2", in6}} {
		for i := 0; i < 4; i++ {
			got, err := socksVia(ctx, r.sock, testUser, testPass, net.JoinHostPort(tc.host, tcpPort))
			if err != nil || !tc.ok(got) {
				t.Errorf("SOCKS5 to %s: %q, %v", tc.host, got, err)
			}
			got, err = connectVia(ctx, r.http, testUser, testPass, net.JoinHostPort(tc.host, tcpPort))
			if err != nil || !tc.ok(got) {
				t.Errorf("CONNECT to %s: %q, %v", tc.host, got, err)
			}
			got, err = getVia(ctx, client, "http://"+net.JoinHostPort(tc.host, httpPort)+"/ip")
			if err != nil || !tc.ok(got) {
				t.Errorf("GET %s: %q, %v", tc.host, got, err)
			}
		}
	}

	curl := needCurl(t)
	u := "http://v6.ns.test:" + httpPort + "/ip"
	for _, args := range [][]string{
		{"-x", "http://" + r.http, "--proxy-user", testUser + ":" + testPass, u},
		{"-p", "-x", "http://" + r.http, "--proxy-user", testUser + ":" + testPass, u},
		{"--socks5-hostname", r.sock, "--proxy-user", testUser + ":" + testPass, u},
	} {
		out, err := exec.Command(curl, append([]string{"-sS", "--max-time", "10"}, args...)...).CombinedOutput()
		if got := strings.TrimSpace(string(out)); err != nil || !in6(got) {
			t.Errorf("curl %v: %q, %v; want an address in %s", args, got, err, subnetBlock)
		}
	}
}

// 50,000 new connections to one target, as fast as 64 workers go, each
// closed by rotor's side first (so the TIME_WAIT is on this side): with a
// random source per connection from the /64 and IP_BIND_ADDRESS_NO_PORT,
// none fails for want of a port. (From one address, the same burst runs
// out of the 28k ephemeral ports: ROTOR_BURST_SINGLE=1 runs that too.)
func TestSubnetBurst50k(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: opens 50,000 connections")
	}
	p := subnetNS(t, "b")
	sink := target.Serve(listenInNS(t, p.ns, "[2001:db8:ff::2]:0"), func(c *net.TCPConn) {
		_, _ = io.Copy(io.Discard, c) // until rotor's side closes
	})
	t.Cleanup(func() { sink.Close() })
	dst := netip.MustParseAddrPort(sink.Addr)

	entries := map[string]netip.Prefix{"block": subnetBlock}
	if os.Getenv("ROTOR_BURST_SINGLE") != "" {
		entries["single"] = netip.MustParsePrefix("2001:db8:ff::1/128")
	}
	for name, e := range entries {
		pl, err := pool.NewEntries([]netip.Prefix{e}, nil, pool.RoundRobin)
		if err != nil {
			t.Fatal(err)
		}
		d := pool.NewDialer(pl, pool.DialerOptions{Timeout: 5 * time.Second})
		const total, workers = 50000, 64
		var next, ok atomic.Int64
		var errMu sync.Mutex
		errs := map[string]int{}
		start := time.Now()
		var ww sync.WaitGroup
		for w := 0; w < workers; w++ {
			ww.Add(1)
			go func() {
				defer ww.Done()
				for next.Add(1) <= total {
					c, _, err := d.DialAddr(context.Background(), dst, pool.Session{})
					if err != nil {
						key := pool.Classify(err).String()
						var errno syscall.Errno
						if errors.As(err, &errno) {
							key = errno.Error()
						}
						errMu.Lock()
						errs[key]++
						errMu.Unlock()
						continue
					}
					ok.Add(1)
					c.Close()
				}
			}()
		}
		ww.Wait()
		took := time.Since(start)
		t.Logf("%s (%s): %d of %d connections in %s (%.0f/s); failures %v", name, e, ok.Load(), total, took.Round(time.Millisecond),
			float64(ok.Load())/took.Seconds(), errs)
		if name == "block" && ok.Load() != total {
			t.Errorf("block: %d of %d connected; failures %v", ok.Load(), total, errs)
		}
	}
}

// A block in the pool gives each SOCKS5 UDP association its own address
// in the block (IP_FREEBIND), for every datagram it sends: 20
// associations to a UDP echo in another namespace, 20 distinct addresses
// in the routed /64.
func TestSubnetUDP(t *testing.T) {
	p := subnetNS(t, "u")
	var echo *net.UDPConn
	inNS(t, p.ns, func() {
		var err error
		if echo, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("[2001:db8:ff::2]:0"))); err != nil {
			t.Error(err)
		}
	})
	if echo == nil {
		t.FailNow()
	}
	srv := target.ServeUDPPeer(echo)
	defer srv.Close()
	dst := srv.Addr
	r := startRotor(t, func(c *config.Config) { c.Pool = []netip.Prefix{subnetBlock} })
	seen := map[string]bool{}
	for range 20 {
		a := socksUDPAssociate(t, r.sock)
		got := a.roundTrip(t, dst)
		if ip, err := netip.ParseAddr(got); err != nil || !subnetBlock.Contains(ip) {
			t.Fatalf("association left from %q, outside %s", got, subnetBlock)
		}
		// A second datagram of the same association leaves from the same address.
		if again := a.roundTrip(t, dst); again != got {
			t.Fatalf("one association left from %s then %s", got, again)
		}
		seen[got] = true
		a.close()
	}
	if len(seen) != 20 {
		t.Errorf("20 associations left from %d addresses, want 20", len(seen))
	}
}

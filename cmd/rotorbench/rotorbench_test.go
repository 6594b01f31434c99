package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/rotor-proxy/rotor/httpproxy"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/internal/testkit"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/socks"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	for _, tc := range []struct{ p, want int }{{50, 50}, {90, 90}, {99, 99}, {100, 100}} {
		if got := percentile(d, tc.p); got != time.Duration(tc.want) {
			t.Errorf("p%d = %d, want %d", tc.p, got, tc.want)
		}
	}
	if percentile(nil, 50) != 0 {
		t.Error("empty percentile not 0")
	}
}

func TestMergeAndSources(t *testing.T) {
	a, b := newRecorder(), newRecorder()
	a.ok(3, []byte("127.0.0.2\n"))
	a.ok(1, []byte("127.0.0.3\n"))
	b.ok(2, []byte("127.0.0.2\n"))
	b.fail(os.ErrDeadlineExceeded)
	var r result
	merge(&r, []*recorder{a, b})
	if r.Requests != 3 || r.Errors != 1 || r.P50 != 2 || r.FirstErr == "" {
		t.Fatalf("merged %+v", r)
	}
	if got := sourceList(r.Sources); got != "127.0.0.2:2 127.0.0.3:1" {
		t.Fatalf("sources %q", got)
	}
}

// inProcessRotor runs rotor's HTTP, SOCKS5 and HTTPS servers in this process on a loopback
// pool of four, with the bench credentials.
func inProcessRotor(t *testing.T) (httpAddr, socksAddr, httpsAddr string) {
	t.Helper()
	var addrs []netip.Addr
	for _, a := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"} {
		addrs = append(addrs, netip.MustParseAddr(a))
	}
	p, err := testkit.Pool(addrs, pool.RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	d := pool.NewDialer(p, pool.DialerOptions{Timeout: 5 * time.Second, Resolver: target.OfflineResolver()})
	creds := testkit.Access(testkit.OneUser(benchUser, benchPass))
	hs := httpproxy.New(httpproxy.Options{Dialer: d, Access: creds, Log: zerolog.Nop()})
	ts := httpproxy.New(httpproxy.Options{Dialer: d, Access: creds, Log: zerolog.Nop(), TLS: testTLSConfig(t)})
	ss := socks.New(socks.Options{Dialer: d, Access: creds, Log: zerolog.Nop()})
	hl, _ := net.Listen("tcp", "127.0.0.1:0")
	tl, _ := net.Listen("tcp", "127.0.0.1:0")
	sl, _ := net.Listen("tcp", "127.0.0.1:0")
	done := make(chan struct{}, 3)
	go func() { _ = hs.Serve(hl); done <- struct{}{} }()
	go func() { _ = ts.Serve(tl); done <- struct{}{} }()
	go func() { _ = ss.Serve(sl); done <- struct{}{} }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
		_ = ts.Shutdown(ctx)
		_ = ss.Shutdown(ctx)
		<-done
		<-done
		<-done
	})
	return hl.Addr().String(), sl.Addr().String(), tl.Addr().String()
}

// testTLSConfig serves a throwaway self-signed certificate.
func testTLSConfig(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// Each workload's request count and source histogram must be exact: with
// round-robin over four addresses, 40 requests are 10 from each.
func TestWorkloadsCountAndRotate(t *testing.T) {
	tgt, err := target.HTTP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	h, s, hs := inProcessRotor(t)
	viaHTTP := proxySpec{HTTP: h, User: benchUser, Pass: benchPass}
	viaHTTPS := proxySpec{HTTP: hs, TLS: true, User: benchUser, Pass: benchPass}
	viaSOCKS := proxySpec{SOCKS: s, User: benchUser, Pass: benchPass}
	base := runOpts{Name: "rotor", Target: tgt.Addr, Conc: 4, Duration: 30 * time.Second, MaxRequests: 40}
	for _, tc := range []struct {
		name string
		run  func(runOpts) result
		via  proxySpec
	}{
		{"http-keepalive", func(o runOpts) result { return runKeepAlive(o, "http-keepalive") }, viaHTTP},
		{"connect-new", func(o runOpts) result { return runNewConn(o, "connect-new") }, viaHTTP},
		{"http-keepalive-tls", func(o runOpts) result { return runKeepAlive(o, "http-keepalive-tls") }, viaHTTPS},
		{"connect-new-tls", func(o runOpts) result { return runNewConn(o, "connect-new-tls") }, viaHTTPS},
		{"socks5-new", func(o runOpts) result { return runNewConn(o, "socks5-new") }, viaSOCKS},
		{"socks5-new-domain", func(o runOpts) result { o.ByName = true; return runNewConn(o, "socks5-new-domain") }, viaSOCKS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			o.Via = tc.via
			r := tc.run(o)
			if r.Errors != 0 || r.Requests != 40 {
				t.Fatalf("%d requests, %d errors (%s), want 40 and 0", r.Requests, r.Errors, r.FirstErr)
			}
			if len(r.Sources) != 4 {
				t.Fatalf("sources %v, want four addresses", r.Sources)
			}
			for src, n := range r.Sources {
				if n != 10 {
					t.Fatalf("source %s seen %d times, want 10 (all: %v)", src, n, r.Sources)
				}
			}
			if r.P50 <= 0 || r.P99 < r.P50 {
				t.Fatalf("latencies p50 %s p99 %s", r.P50, r.P99)
			}
		})
	}
	t.Run("direct sees the bench's own address", func(t *testing.T) {
		r := runKeepAlive(base, "http-keepalive")
		if r.Errors != 0 || r.Sources["127.0.0.1"] != 40 {
			t.Fatalf("direct: %v, %d errors", r.Sources, r.Errors)
		}
	})
}

// Bulk counts exactly the bytes asked for, through both tunnel kinds.
func TestBulkByteCount(t *testing.T) {
	tgt, err := target.HTTP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	h, s, _ := inProcessRotor(t)
	const size = 8<<20 + 7
	for _, via := range []proxySpec{{HTTP: h, User: benchUser, Pass: benchPass}, {SOCKS: s, User: benchUser, Pass: benchPass}, {}} {
		r := runBulk(runOpts{Name: "x", Via: via, Target: tgt.Addr}, "bulk", size)
		if r.Errors != 0 || r.Bytes != size || r.Requests != 1 {
			t.Fatalf("via %+v: %d bytes, %d errors (%s), want %d", via, r.Bytes, r.Errors, r.FirstErr, size)
		}
	}
}

// Idle opens exactly K tunnels and measures this process when given its
// own PID (the in-process proxy and the clients both count here).
func TestIdleOpensK(t *testing.T) {
	tgt, err := target.HTTP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	_, s, _ := inProcessRotor(t)
	r := runIdle(runOpts{Name: "rotor", Via: proxySpec{SOCKS: s, User: benchUser, Pass: benchPass}, Target: tgt.Addr, PID: os.Getpid()}, "idle-socks5", 50)
	if r.Requests != 50 || r.Errors != 0 {
		t.Fatalf("%d tunnels, %d errors (%s), want 50", r.Requests, r.Errors, r.FirstErr)
	}
	// Client socket, proxy's two, target's one: four per tunnel here.
	if r.FDsPer < 3.9 || r.FDsPer > 4.1 {
		t.Fatalf("%.2f fds per tunnel in one process holding all four ends, want 4", r.FDsPer)
	}
}

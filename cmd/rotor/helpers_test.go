package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/rotor-proxy/rotor/auth"
	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/pool"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	binDir    string
	binErr    error
)

// rotorBinary builds ./cmd/rotor once per test run, for tests of exit
// codes and signals that need a real process.
func rotorBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "rotor-test-"); binErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, "rotor"), ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "rotor")
}

const testUser, testPass = "tester", "pa55-w0rd-xyzzy"

var poolAddrs = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// rotor is a running instance for one test, with credentials, both
// listeners on ephemeral loopback ports and a debug log captured.
type rotor struct {
	*instance
	log  *syncBuffer
	http string // proxy addresses
	sock string
}

// paths is one request over each of rotor's paths (plain HTTP through c,
// which must carry user's credentials; CONNECT; SOCKS5), each returning the
// source address its target saw.
func (r *rotor) paths(ctx context.Context, c *http.Client, user, pass, httpURL, peerAddr string) []func() (string, error) {
	return []func() (string, error){
		func() (string, error) { return getVia(ctx, c, httpURL) },
		func() (string, error) { return connectVia(ctx, r.http, user, pass, peerAddr) },
		func() (string, error) { return socksVia(ctx, r.sock, user, pass, peerAddr) },
	}
}

func startRotor(t *testing.T, mutate ...func(*config.Config)) *rotor {
	t.Helper()
	return startRotorResolver(t, target.OfflineResolver(), mutate...)
}

// startRotorResolver is startRotor with a resolver of the test's own.
func startRotorResolver(t *testing.T, res *net.Resolver, mutate ...func(*config.Config)) *rotor {
	t.Helper()
	cfg := config.Config{
		Strategy: pool.RoundRobin, HTTPListen: "127.0.0.1:0", SOCKSListen: "127.0.0.1:0",
		Users:       []auth.UserSpec{auth.PlainUser(testUser, testPass)},
		DialTimeout: 5 * time.Second, HandshakeTimeout: 5 * time.Second, HeaderTimeout: 5 * time.Second,
		// The test targets live on loopback, which the policy refuses.
		AllowDest: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
	}
	for _, a := range poolAddrs {
		cfg.Pool = append(cfg.Pool, pool.Single(netip.MustParseAddr(a)))
	}
	for _, m := range mutate {
		m(&cfg)
	}
	logs := &syncBuffer{}
	in, err := start(cfg, zerolog.New(logs).Level(zerolog.DebugLevel), res)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := in.shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	r := &rotor{instance: in, log: logs}
	if in.httpAddr != nil {
		r.http = in.httpAddr.String()
	}
	if in.socksAddr != nil {
		r.sock = in.socksAddr.String()
	}
	return r
}

func (r *rotor) httpURL() string {
	return "http://" + testUser + ":" + testPass + "@" + r.http
}

func (r *rotor) socksURL() string {
	return "socks5://" + testUser + ":" + testPass + "@" + r.sock
}

func httpTarget(t *testing.T) *target.Server {
	t.Helper()
	return started(t)(target.HTTP("127.0.0.1:0"))
}

func tcpTarget(t *testing.T, handle func(*net.TCPConn)) *target.Server {
	t.Helper()
	return started(t)(target.TCP("127.0.0.1:0", handle))
}

func started(t *testing.T) func(*target.Server, error) *target.Server {
	return func(s *target.Server, err error) *target.Server {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

// wantEach fails unless every pool address was seen exactly n times.
func wantEach(t *testing.T, seen map[string]int, n int) {
	t.Helper()
	total := 0
	for _, a := range poolAddrs {
		if seen[a] != n {
			t.Errorf("%s seen %d times, want %d (all: %v)", a, seen[a], n, seen)
		}
		total += seen[a]
	}
	if total != len(poolAddrs)*n {
		t.Errorf("requests left from addresses outside the pool: %v", seen)
	}
}

// socksHello is a SOCKS5 greeting offering username/password, followed by
// the RFC 1929 request with the test credentials.
func socksHello() []byte { return socksHelloAs(testUser, testPass) }

// socksHelloAs is socksHello with other credentials.
func socksHelloAs(user, pass string) []byte {
	b := []byte{5, 1, 2, 1, byte(len(user))}
	b = append(b, user...)
	b = append(b, byte(len(pass)))
	return append(b, pass...)
}

// socksConnect is a SOCKS5 CONNECT request to ap (ATYP 01 or 04).
func socksConnect(ap netip.AddrPort) []byte {
	b := []byte{5, 1, 0, 1}
	if ap.Addr().Is4() {
		ip := ap.Addr().As4()
		b = append(b, ip[:]...)
	} else {
		b[3] = 4
		ip := ap.Addr().As16()
		b = append(b, ip[:]...)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

// waitCount waits up to 5 s for load() to reach want (hits are counted as
// requests end, just after the client has its answer) and returns the
// last value seen.
func waitCount(load func() int64, want int64) int64 {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := load()
		if n >= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitLog waits up to 5 s for the log to hold every one of want (rotor
// logs a request after answering it) and returns the log as it then is.
func (r *rotor) waitLog(want ...string) string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		logs := r.log.String()
		all := true
		for _, w := range want {
			all = all && strings.Contains(logs, w)
		}
		if all || time.Now().After(deadline) {
			return logs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

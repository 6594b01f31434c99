package main

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/serve"
)

// At the connection limit new clients are refused cleanly (503 over HTTP,
// a close over SOCKS5) while the connections already open keep working,
// and a freed slot is used again.
func TestConnectionLimit(t *testing.T) {
	echo := tcpTarget(t, target.Echo)
	r := startRotor(t, func(c *config.Config) { c.MaxConns = 3 })
	var open []net.Conn
	for _, how := range []string{"connect", "socks5", "connect"} {
		c := openTunnel(t, r, how, echo.Addr)
		defer c.Close()
		open = append(open, c)
	}
	ctx := context.Background()
	if _, err := connectVia(ctx, r.http, testUser, testPass, echo.Addr); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("4th client over HTTP: %v, want 503", err)
	}
	if _, err := socksVia(ctx, r.sock, testUser, testPass, echo.Addr); err == nil {
		t.Fatal("4th client over SOCKS5 was served")
	}
	for i, c := range open {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("still here")); err != nil {
			t.Fatalf("tunnel %d: %v", i, err)
		}
		buf := make([]byte, 10)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "still here" {
			t.Fatalf("tunnel %d after refusals: %q %v", i, buf, err)
		}
	}
	open[0].Close()
	// The slot comes back once rotor has seen the close.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", r.http)
		if err != nil {
			t.Fatal(err)
		}
		err = writeConnect(c, testUser, testPass, echo.Addr, "")
		buf := make([]byte, 12)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.ReadFull(c, buf)
		c.Close()
		if err == nil && string(buf) == "HTTP/1.1 200" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot after a tunnel closed: %q", buf)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(r.log.String(), `"limit":"max-conns"`) {
		t.Error("refusals at the limit were not logged")
	}
	if n := r.hits().Load(serve.MaxConns); n < 2 {
		t.Errorf("counted %d refusals at the limit, want at least 2", n)
	}
}

// A tunnel that moves nothing either way is closed at --idle-timeout,
// parked or not, and the hit is counted and logged by name.
func TestTunnelIdleTimeout(t *testing.T) {
	echo := tcpTarget(t, target.Echo)
	r := startRotor(t, func(c *config.Config) { c.IdleTimeout = 600 * time.Millisecond })
	for _, how := range []string{"connect", "socks5"} {
		c := openTunnel(t, r, how, echo.Addr)
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("%s: %v, want the tunnel closed by rotor at its idle timeout", how, err)
		}
	}
	if n := waitCount(func() int64 { return r.hits().Load(serve.IdleTimeout) }, 2); n != 2 {
		t.Fatalf("counted %d idle timeouts, want 2", n)
	}
	if !strings.Contains(r.waitLog(`"timeout":"idle-timeout"`), `"timeout":"idle-timeout"`) {
		t.Error("idle timeouts not logged by name")
	}
}

// With fewer descriptors than clients (RLIMIT_NOFILE lowered for the
// process) rotor neither crashes nor spins, and serves again once the
// clients go away.
func TestDescriptorExhaustion(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: runs rotor out of descriptors")
	}
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("prlimit not installed; .ci/run must install util-linux")
		}
		t.Skip("prlimit (util-linux) not installed")
	}
	echo := tcpTarget(t, target.Echo)
	peer := tcpTarget(t, target.WritePeer)
	p := startProcessWith(t, []string{prlimit, "--nofile=48:48", rotorBinary(t)}, "--max-conns", "1000")
	r := &rotor{http: p.http, sock: p.socks}
	var clients []net.Conn
	for i := 0; i < 60; i++ {
		c, err := net.DialTimeout("tcp", p.socks, time.Second)
		if err != nil {
			continue
		}
		clients = append(clients, c)
		_, _ = c.Write(append(socksHello(), socksConnect(netip.MustParseAddrPort(echo.Addr))...))
	}
	// The accept loop really ran out of descriptors and backed off.
	p.waitFor(t, "too many open files")
	cpu0 := processCPU(t, p.cmd.Process.Pid)
	time.Sleep(2 * time.Second)
	if used := processCPU(t, p.cmd.Process.Pid) - cpu0; used > 500*time.Millisecond {
		t.Fatalf("rotor used %s of CPU in 2s while out of descriptors: a busy loop", used)
	}
	for _, c := range clients {
		c.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := socksVia(context.Background(), r.sock, testUser, testPass, peer.Addr)
		if err == nil || time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("no service 10s after descriptors were freed: %v", err)
			}
			_ = got
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if p.cmd.ProcessState != nil {
		t.Fatal("rotor exited")
	}
}

// processCPU is the user+system CPU time of pid, from /proc (10 ms ticks).
func processCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+1:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}

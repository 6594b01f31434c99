package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
)

// SIGHUP under load: a client loop of 2,000 requests (SOCKS5, CONNECT,
// HTTP forwarding) while the pool file and alice's password change 10
// times. Outside each change, every request succeeds and leaves from the
// current pool; during one, the only failures are 407s (or SOCKS5 auth
// failures) for the password being replaced. A tunnel opened before the
// first change carries bytes after the last. A bad file is refused with
// its line, and the old configuration keeps serving.
func TestReloadUnderLoad(t *testing.T) {
	peer := tcpTarget(t, target.WritePeer)
	ht := httpTarget(t)
	echo := tcpTarget(t, target.Echo)
	dir := t.TempDir()
	poolFile, usersFile := filepath.Join(dir, "pool"), filepath.Join(dir, "users")
	pools := [][]string{{"127.0.0.2", "127.0.0.3"}, {"127.0.0.4", "127.0.0.5"}, {"127.0.0.2", "127.0.0.6", "127.0.0.7"}}
	password := func(gen int) string { return "pw-" + string(rune('a'+gen)) }
	writeGen := func(gen int) {
		writeFile(t, poolFile, strings.Join(pools[gen%len(pools)], "\n")+"\n")
		writeFile(t, usersFile, bcryptEntry(t, "alice", password(gen))+"\n")
	}
	writeGen(0)
	p := startProcess(t, "--pool-file", poolFile, "--users-file", usersFile, "--log-level", "info")

	// Log lines are read here from now on: reloads are counted, and the
	// pipe never fills.
	reloaded := make(chan struct{}, 16)
	var logMu sync.Mutex
	var failures []string
	go func() {
		for line := range p.lines {
			switch {
			case strings.Contains(line, "configuration reloaded"):
				reloaded <- struct{}{}
			case strings.Contains(line, "reload failed"):
				logMu.Lock()
				failures = append(failures, line)
				logMu.Unlock()
				reloaded <- struct{}{}
			}
		}
	}()

	tunnel, err := connectRaw(p.http, "alice", password(0), echo.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tunnel.Close()

	// gen is the configuration in force; epoch is odd while a change is
	// in flight (written and signalled, not yet logged as applied).
	var gen, epoch atomic.Int64
	inPool := func(g int64, src string) bool {
		for _, a := range pools[g%int64(len(pools))] {
			if a == src {
				return true
			}
		}
		return false
	}
	changes := make(chan error, 1)
	go func() {
		for g := 1; g <= 10; g++ {
			time.Sleep(100 * time.Millisecond)
			epoch.Add(1)
			writeGen(g)
			if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
				changes <- err
				return
			}
			select {
			case <-reloaded:
			case <-time.After(10 * time.Second):
				changes <- context.DeadlineExceeded
				return
			}
			gen.Store(int64(g))
			epoch.Add(1)
		}
		changes <- nil
	}()

	ctx := context.Background()
	var ok, expected407 int
	done := false
	for i := 0; i < 2000 || !done; i++ {
		if !done {
			select {
			case err := <-changes:
				if err != nil {
					t.Fatal(err)
				}
				done = true
			default:
			}
		}
		e0, g := epoch.Load(), gen.Load()
		pass := password(int(g))
		var got string
		var err error
		switch i % 3 {
		case 0:
			got, err = socksVia(ctx, p.socks, "alice", pass, peer.Addr)
		case 1:
			got, err = connectVia(ctx, p.http, "alice", pass, peer.Addr)
		case 2:
			c := proxyClient("http://alice:"+pass+"@"+p.http, 1)
			got, err = getVia(ctx, c, "http://"+ht.Addr+"/ip")
			c.CloseIdleConnections()
		}
		e1 := epoch.Load()
		changing := e0 != e1 || e0%2 == 1
		authFailure := err != nil && (strings.Contains(err.Error(), "407") || strings.Contains(err.Error(), "username/password authentication failed"))
		switch {
		case err == nil && (inPool(g, got) || changing && inPool(g+1, got)):
			ok++
		case err == nil:
			t.Fatalf("request %d (gen %d) left from %s, outside the pool %v", i, g, got, pools[g%int64(len(pools))])
		case authFailure && changing:
			expected407++
		default:
			t.Fatalf("request %d (gen %d, changing %v): %v", i, g, changing, err)
		}
	}
	t.Logf("%d requests ok, %d expected auth failures during the 10 changes", ok, expected407)

	// The password before last was verified (and cached) many times: the
	// reload dropped it with its users.
	if _, err := socksVia(ctx, p.socks, "alice", password(9), peer.Addr); err == nil {
		t.Error("a replaced password still works (stale credential cache)")
	}

	// The tunnel from before the first change is untouched.
	msg := []byte("still here after 10 reloads")
	if _, err := tunnel.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	_ = tunnel.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(tunnel, buf); err != nil || string(buf) != string(msg) {
		t.Fatalf("tunnel after reloads: %q, %v", buf, err)
	}

	// A bad users file: refused with its line; the old password still works.
	writeFile(t, usersFile, bcryptEntry(t, "alice", "pw-new")+"\nbob:hunter2\n")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	<-reloaded
	logMu.Lock()
	bad := strings.Join(failures, "\n")
	logMu.Unlock()
	if !strings.Contains(bad, "line 2") || strings.Contains(bad, "hunter2") {
		t.Errorf("bad users file: log %q, want the line named and the secret absent", bad)
	}
	last := password(10)
	if got, err := socksVia(ctx, p.socks, "alice", last, peer.Addr); err != nil || !inPool(10, got) {
		t.Errorf("after a refused reload: %q, %v; want the previous configuration", got, err)
	}
	if _, err := socksVia(ctx, p.socks, "alice", "pw-new", peer.Addr); err == nil {
		t.Error("the refused file's password works")
	}
}

// After a reload, /metrics shows the new pool: a removed address's series
// are gone, an added one's appear, a kept one's counts carry on.
func TestReloadMetrics(t *testing.T) {
	peer := tcpTarget(t, target.WritePeer)
	r := startWithFiles(t, "127.0.0.2\n127.0.0.3\n", "alice:{PLAIN}pa\n", func(c *config.Config) { c.MetricsListen = "127.0.0.1:0" })
	maddr := r.metricsLn.Addr().String()
	ctx := context.Background()
	for i := 0; i < 4; i++ {
		if _, err := socksVia(ctx, r.sock, "alice", "pa", peer.Addr); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, r.cfg.PoolFile, "127.0.0.2\n127.0.0.6\n")
	if err := r.reload(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		if _, err := socksVia(ctx, r.sock, "alice", "pa", peer.Addr); err != nil {
			t.Fatal(err)
		}
	}
	waitMetric(t, maddr, 2, "rotor_source_requests_total", "source", "127.0.0.6", "protocol", "socks5", "result", "ok")
	fams := scrape(t, maddr)
	if got, _ := value(fams, "rotor_source_requests_total", "source", "127.0.0.2", "protocol", "socks5", "result", "ok"); got != 4 {
		t.Errorf("kept 127.0.0.2: %v requests, want 2 before and 2 after", got)
	}
	for name, f := range fams {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "source" && l.GetValue() == "127.0.0.3" {
					t.Errorf("%s still has source=127.0.0.3 after its removal", name)
				}
			}
		}
	}
	// A bad pool file is refused with its line; the pool stays.
	writeFile(t, r.cfg.PoolFile, "127.0.0.2\n127.0.0.300\n")
	if err := r.reload(); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("bad pool file: %v, want an error naming line 2", err)
	}
	if got := labels(r.dialer.Pool()); strings.Join(got, ",") != "127.0.0.2,127.0.0.6" {
		t.Errorf("pool after a refused reload: %v", got)
	}
}

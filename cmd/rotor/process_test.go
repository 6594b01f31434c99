package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/internal/target"
)

func TestConfigErrorsExit2(t *testing.T) {
	t.Parallel()
	bin := rotorBinary(t)
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"not an IP", []string{"--pool", "127.0.0.2,banana"}, nil, "banana"},
		{"env not an IP", nil, []string{"IP_POOL=10.0.0.300"}, "10.0.0.300"},
		{"not on this host", []string{"--pool", "127.0.0.2,192.0.2.77"}, nil, "192.0.2.77"},
		{"unknown strategy", []string{"--pool", "127.0.0.2", "--strategy", "fastest"}, nil, "fastest"},
		{"bad listen address", []string{"--pool", "127.0.0.2", "--http-listen", "127.0.0.1:http"}, nil, "127.0.0.1:http"},
		{"env bad listen address", []string{"--pool", "127.0.0.2"}, []string{"LISTEN_ADDR=nowhere"}, "nowhere"},
		{"user without password", []string{"--pool", "127.0.0.2"}, []string{"PROXY_USER=alice"}, "alice"},
		{"open proxy", []string{"--pool", "127.0.0.2", "--socks-listen", "0.0.0.0:0"}, nil, "--allow-open"},
		{"no pool", nil, nil, "IP_POOL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, tc.env...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("exit: %v, want status 2; stderr: %s", err, stderr.String())
			}
			msg := stderr.String()
			if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, tc.want) {
				t.Fatalf("stderr %q: want one line naming %q", msg, tc.want)
			}
		})
	}
}

func TestVersionAndHelp(t *testing.T) {
	t.Parallel()
	bin := rotorBinary(t)
	for _, arg := range []string{"--version", "--help"} {
		out, err := exec.Command(bin, arg).Output()
		if err != nil || !strings.Contains(string(out), "rotor") {
			t.Errorf("%s: %v %q", arg, err, out)
		}
	}
	// Built from a git checkout with VCS stamping, --version names the
	// commit (GOFLAGS here says -buildvcs=false; the flag overrides it).
	rev, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		t.Skipf("not a git checkout (%v): the revision cannot be checked", err)
	}
	stamped := filepath.Join(t.TempDir(), "rotor")
	if out, err := exec.Command("go", "build", "-buildvcs=true", "-o", stamped, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -buildvcs=true: %v\n%s", err, out)
	}
	out, err := exec.Command(stamped, "--version").Output()
	if want := "revision " + strings.TrimSpace(string(rev)); err != nil || !strings.Contains(string(out), want) {
		t.Errorf("--version of a stamped build: %q, %v; want %q", out, err, want)
	}
	if out, err := exec.Command(bin, "version").Output(); err != nil || !strings.Contains(string(out), "revision unknown") {
		t.Errorf("version of an unstamped build: %q, %v; want it to say the revision is unknown", out, err)
	}
}

// Mistakes of an unprivileged rotor (systemd's DynamicUser, the container
// image): a port below 1024, and a users file it may not read. Each is one
// line naming what and how to fix it, exit 2 (a configuration error,
// which systemd does not restart). As root the binary runs as nobody.
func TestUnprivilegedErrorsExit2(t *testing.T) {
	t.Parallel()
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); err == nil && strings.TrimSpace(string(b)) != "1024" {
		t.Skipf("ip_unprivileged_port_start is %s: any user may bind low ports here", strings.TrimSpace(string(b)))
	}
	bin := rotorBinary(t)
	var prefix []string
	if os.Geteuid() == 0 {
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Skip("root, and no setpriv (util-linux) to run rotor as another user")
		}
		// nobody must be able to reach the binary.
		if err := os.Chmod(filepath.Dir(bin), 0o755); err != nil {
			t.Fatal(err)
		}
		prefix = []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"}
	}
	secret := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(secret, []byte("u:{PLAIN}p\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		if err := os.Chmod(secret, 0o000); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--http-listen", "127.0.0.1:81", "--socks-listen", ""}, []string{"127.0.0.1:81", "a port of 1024 or more", "setcap cap_net_bind_service=+ep " + bin}},
		{[]string{"--http-listen", "127.0.0.1:0", "--socks-listen", "", "--users-file", secret}, []string{secret, "permission denied", "make the file readable"}},
	} {
		argv := append(append(prefix, bin, "--pool", "127.0.0.2"), tc.args...)
		cmd := exec.Command(argv[0], argv[1:]...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Fatalf("%v: exit %v, want status 2; stderr: %s", tc.args, err, stderr.String())
		}
		msg := stderr.String()
		for _, want := range tc.want {
			if !strings.Contains(msg, want) || strings.Count(msg, "\n") != 1 {
				t.Errorf("stderr %q: want one line with %q", msg, want)
			}
		}
	}
}

// rotorProcess runs the binary on a loopback pool and returns the
// listener addresses from its start-up log line.
type rotorProcess struct {
	cmd         *exec.Cmd
	http, socks string
	debug       string      // with --debug-listen
	lines       chan string // stderr, one JSON log line each; closed at exit
}

func startProcess(t *testing.T, args ...string) *rotorProcess {
	t.Helper()
	return startProcessWith(t, []string{rotorBinary(t)}, args...)
}

// startProcessWith runs rotor by the command line prefix (the binary, or
// a wrapper such as prlimit and then the binary) with a loopback set-up
// and args.
func startProcessWith(t *testing.T, prefix []string, args ...string) *rotorProcess {
	t.Helper()
	argv := append(prefix[1:len(prefix):len(prefix)], "--http-listen", "127.0.0.1:0", "--socks-listen", "127.0.0.1:0",
		"--allow-dest", "127.0.0.0/8")
	if !slices.Contains(args, "--pool-file") {
		argv = append(argv, "--pool", "127.0.0.2,127.0.0.3")
	}
	argv = append(argv, args...)
	cmd := exec.Command(prefix[0], argv...)
	cmd.Env = []string{"PROXY_USER=" + testUser, "PROXY_PASS=" + testPass}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &rotorProcess{cmd: cmd, lines: make(chan string, 1000)}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	if slices.Contains(args, "--debug-listen") {
		var debug struct{ Addr string }
		if line := p.waitFor(t, "serving /debug/pprof/"); json.Unmarshal([]byte(line), &debug) != nil {
			t.Fatalf("bad debug line %q", line)
		}
		p.debug = debug.Addr
	}
	var started struct{ Message, HTTP, Socks5 string }
	if line := p.waitFor(t, "rotor started"); json.Unmarshal([]byte(line), &started) != nil {
		t.Fatalf("bad start-up line %q", line)
	}
	p.http, p.socks = started.HTTP, started.Socks5
	return p
}

// waitFor returns the first log line containing s, failing after 10 s.
func (p *rotorProcess) waitFor(t *testing.T, s string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	var seen []string
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("rotor exited before logging %q; it said:\n%s", s, strings.Join(seen, "\n"))
			}
			seen = append(seen, line)
			if strings.Contains(line, s) {
				return line
			}
		case <-timeout:
			t.Fatalf("no log line with %q within 10s", s)
		}
	}
}

// waitParked waits up to 10 s until no tunnel direction of the process
// holds a goroutine: every tunnel is parked (or gone). It reads the
// goroutine profile of the debug listener.
func (p *rotorProcess) waitParked(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + p.debug + "/debug/pprof/goroutine?debug=1")
		if err != nil {
			t.Fatal(err)
		}
		profile, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(profile), "tunnel.(*direction).loop") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("tunnel directions still hold goroutines after 10 s:\n%s", profile)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SIGTERM during live tunnels: the listeners close at once, the tunnels
// finish within the timeout without losing a byte, and rotor exits 0.
func TestSIGTERMDrainsTunnels(t *testing.T) {
	tgt := tcpTarget(t, target.CountThenReply)
	p := startProcess(t, "--shutdown-timeout", "20s", "--debug-listen", "127.0.0.1:0")
	r := &rotor{http: p.http, sock: p.socks}
	tunnels := []net.Conn{openTunnel(t, r, "connect", tgt.Addr), openTunnel(t, r, "socks5", tgt.Addr)}
	chunk := bytes.Repeat([]byte("0123456789"), 100_000) // 1 MB
	for _, c := range tunnels {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	// Once parked without goroutines, shutdown must still wait for the
	// tunnels, and they must wake on data.
	p.waitParked(t)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, "shutting down")
	for _, addr := range []string{p.http, p.socks} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after SIGTERM", addr)
		}
	}
	signalled := time.Now()
	for _, c := range tunnels {
		if _, err := c.Write(chunk); err != nil {
			t.Fatalf("tunnel cut after SIGTERM: %v", err)
		}
		_ = c.(*net.TCPConn).CloseWrite()
		reply, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(reply)); got != strconv.Itoa(2*len(chunk)) {
			t.Fatalf("target counted %q bytes, want %d", got, 2*len(chunk))
		}
	}
	err := p.cmd.Wait()
	if err != nil {
		t.Fatalf("exit: %v, want status 0", err)
	}
	// Exit follows the last tunnel, not the 20 s timeout.
	if waited := time.Since(signalled); waited > 15*time.Second {
		t.Fatalf("exited %s after the tunnels ended, want promptly", waited)
	}
}

// SIGTERM with 100 live tunnels, CONNECT and SOCKS5, most of them parked:
// the listeners close at once, the tunnels are closed at the shutdown
// timeout, and rotor exits 0 within the timeout and a second.
func TestSIGTERMTimeoutClosesTunnels(t *testing.T) {
	tgt := tcpTarget(t, target.CountThenReply)
	const timeout = time.Second
	p := startProcess(t, "--shutdown-timeout", timeout.String(), "--debug-listen", "127.0.0.1:0")
	r := &rotor{http: p.http, sock: p.socks}
	var tunnels []net.Conn
	for i := 0; i < 100; i++ {
		c := openTunnel(t, r, []string{"connect", "socks5"}[i%2], tgt.Addr)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		tunnels = append(tunnels, c)
	}
	p.waitParked(t)
	signalled := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, "shutting down")
	if c, err := net.DialTimeout("tcp", p.socks, time.Second); err == nil {
		c.Close()
		t.Fatal("listener still open after SIGTERM")
	}
	for _, c := range tunnels {
		if _, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("tunnel: %v, want closed by rotor", err)
		}
	}
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("exit: %v, want status 0", err)
	}
	if d := time.Since(signalled); d > timeout+time.Second {
		t.Fatalf("exited %s after SIGTERM, want within the %s timeout and a second", d, timeout)
	}
}

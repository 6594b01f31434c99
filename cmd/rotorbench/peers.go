package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"text/template"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// peer is a proxy under test.
type peer struct {
	Name      string
	HTTP      string // HTTP proxy address, empty if none
	SOCKS     string // SOCKS5 proxy address, empty if none
	HTTPS     string // HTTP proxy inside TLS, empty if none
	DebugAddr string // rotor only
	UDP       bool   // serves SOCKS5 UDP ASSOCIATE
	UDPOnly   bool   // measured on the udp workloads only (dante)
	NoAuth    bool   // takes no credentials (dante: system accounts only)
	// Workloads, when set, are the only workloads (by name prefix) the
	// peer is measured on.
	Workloads []string
	// exit is the second process of a chain (gateway in front, exit
	// behind): stopped with it, its CPU counted with it.
	exit *peer
	cmd  *exec.Cmd
	dir  string
	// cgroup is the CPU cgroup the process runs in (--cpu-per-proxy),
	// removed when it stops.
	cgroup string
}

// extraPIDs are the peer's processes besides PID.
func (p *peer) extraPIDs() []int {
	if p.exit == nil {
		return nil
	}
	return []int{p.exit.PID()}
}

func (p *peer) PID() int { return p.cmd.Process.Pid }

func (p *peer) spec(socks bool) proxySpec {
	s := proxySpec{User: benchUser, Pass: benchPass}
	if p.NoAuth {
		s.User, s.Pass = "", ""
	}
	if socks {
		s.SOCKS = p.SOCKS
	} else {
		s.HTTP = p.HTTP
	}
	return s
}

// stop ends the peer (SIGTERM, then SIGKILL) and removes its files.
func (p *peer) stop() {
	if p.exit != nil {
		defer p.exit.stop()
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	os.RemoveAll(p.dir)
	if p.cgroup != "" {
		_ = os.Remove(p.cgroup) // empty once its processes have exited
	}
}

const benchUser, benchPass = "bench", "bench-pass-123"

// ports hands out listen ports below the ephemeral range (32768-60999), so
// that the load's own client ports never collide with them.
type ports struct{ next int }

func (p *ports) take() (int, error) {
	for ; p.next < 32000; p.next++ {
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p.next))
		if err == nil {
			ln.Close()
			p.next++
			return p.next - 1, nil
		}
	}
	return 0, errors.New("no free port below 32000")
}

func waitListening(addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("nothing listening on %s after 10s", addr)
}

// peerDir makes a directory the peer's own user (squid drops to "proxy",
// tinyproxy to "nobody") can read and write.
func peerDir(name string) (string, error) {
	dir, err := os.MkdirTemp("", "rotorbench-"+name+"-")
	if err != nil {
		return "", err
	}
	return dir, os.Chmod(dir, 0o777)
}

func render(repo, name, dir string, port int, extra map[string]any) (string, error) {
	t, err := template.ParseFiles(filepath.Join(repo, "testdata", "peers", name+".conf"))
	if err != nil {
		return "", err
	}
	vars := map[string]any{"Port": port, "Dir": dir, "User": benchUser, "Pass": benchPass}
	for k, v := range extra {
		vars[k] = v
	}
	var b bytes.Buffer
	err = t.Execute(&b, vars)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, name+".conf")
	return path, os.WriteFile(path, b.Bytes(), 0o644)
}

func startCmd(p *peer, name string, args ...string) error {
	p.cmd = exec.Command(name, args...)
	logf, err := os.Create(filepath.Join(p.dir, "stderr.log"))
	if err != nil {
		return err
	}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		return err
	}
	for _, a := range []string{p.HTTP, p.SOCKS, p.HTTPS} {
		if a == "" {
			continue
		}
		if err := waitListening(a); err != nil {
			out, _ := os.ReadFile(filepath.Join(p.dir, "stderr.log"))
			p.stop()
			return fmt.Errorf("%s: %w; it said: %s", name, err, out)
		}
	}
	return nil
}

// certPair is the certificate every TLS listener under test serves.
type certPair struct{ Cert, Key string }

// makeCert writes a self-signed pair for 127.0.0.1 with rotor cert into
// dir, readable by the peers' own users (the key too: a benchmark's).
func makeCert(bin, dir string) (*certPair, error) {
	cp := &certPair{filepath.Join(dir, "proxy.crt"), filepath.Join(dir, "proxy.key")}
	if out, err := exec.Command(bin, "cert", "--host", "127.0.0.1", "--cert", cp.Cert, "--key", cp.Key).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("rotor cert: %v: %s", err, out)
	}
	return cp, os.Chmod(cp.Key, 0o644)
}

// startRotorPeer runs the rotor binary on a loopback pool of four with both
// listeners and a debug listener for goroutine counts, and with cp (nil:
// none) an HTTPS listener. With mixed, one mixed port (--listen) serves
// every protocol instead. Access logging is off (warn level), as for every
// peer.
func startRotorPeer(name, bin string, pp *ports, cp *certPair, mixed bool) (*peer, error) {
	p := &peer{Name: name, UDP: !mixed}
	var err error
	if p.dir, err = peerDir("rotor"); err != nil {
		return nil, err
	}
	hp, _ := pp.take()
	sp, _ := pp.take()
	tp, _ := pp.take()
	dp, err := pp.take()
	if err != nil {
		return nil, err
	}
	p.HTTP, p.SOCKS, p.DebugAddr = addr(hp), addr(sp), addr(dp)
	args := []string{"--pool", "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5", "--debug-listen", p.DebugAddr,
		"--user", benchUser, "--pass", benchPass, "--log-level", "warn", "--allow-dest", "127.0.0.0/8"}
	if mixed {
		p.SOCKS = p.HTTP
		args = append(args, "--http-listen", "", "--socks-listen", "", "--listen", p.HTTP)
	} else {
		args = append(args, "--http-listen", p.HTTP, "--socks-listen", p.SOCKS)
	}
	if cp != nil {
		if p.HTTPS = addr(tp); mixed {
			p.HTTPS = p.HTTP
		} else {
			args = append(args, "--https-listen", p.HTTPS)
		}
		args = append(args, "--tls-cert", cp.Cert, "--tls-key", cp.Key)
	}
	return p, startCmd(p, bin, args...)
}

// startConfPeer starts an HTTP proxy peer configured by
// testdata/peers/NAME.conf: prepare writes any files the config names
// into the peer's directory, args builds the command line from the
// rendered config's path.
func startConfPeer(repo string, pp *ports, name string, extra map[string]any, prepare func(dir string) error, args func(conf string) []string) (*peer, error) {
	return startConfPeerAs(repo, pp, name, name, extra, prepare, args)
}

// startConfPeerAs is startConfPeer for a peer whose config
// (testdata/peers/NAME.conf) and binary are named differently.
func startConfPeerAs(repo string, pp *ports, name, binary string, extra map[string]any, prepare func(dir string) error, args func(conf string) []string) (*peer, error) {
	bin, err := exec.LookPath(binary)
	if err != nil {
		return nil, errNotInstalled
	}
	p := &peer{Name: name}
	if p.dir, err = peerDir(name); err != nil {
		return nil, err
	}
	port, err := pp.take()
	if err != nil {
		return nil, err
	}
	p.HTTP = addr(port)
	conf, err := render(repo, name, p.dir, port, extra)
	if err != nil {
		return nil, err
	}
	if prepare != nil {
		if err := prepare(p.dir); err != nil {
			return nil, err
		}
	}
	return p, startCmd(p, bin, args(conf)...)
}

// squidHtpasswd writes the bench user's htpasswd into a squid's dir.
// basic_ncsa_auth checks with crypt(3), which takes bcrypt; Squid caches a
// good credential (credentialsttl), so the cost is paid once.
func squidHtpasswd(dir string) error {
	hash, err := bcrypt.GenerateFromPassword([]byte(benchPass), bcrypt.MinCost)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(benchUser+":"+string(hash)+"\n"), 0o644)
}

// startSquid runs squid, with cp (nil: none) an https_port too (Debian's
// squid-openssl; the GnuTLS build has no https_port).
func startSquid(repo string, pp *ports, cp *certPair) (*peer, error) {
	extra := map[string]any{}
	if cp != nil {
		tp, err := pp.take()
		if err != nil {
			return nil, err
		}
		extra = map[string]any{"TLSPort": tp, "Cert": cp.Cert, "Key": cp.Key}
	}
	p, err := startConfPeer(repo, pp, "squid", extra, squidHtpasswd, func(conf string) []string { return []string{"-N", "-f", conf} })
	if err == nil && cp != nil {
		p.HTTPS = addr(extra["TLSPort"].(int))
		err = waitListening(p.HTTPS)
	}
	return p, err
}

func startTinyproxy(repo string, pp *ports) (*peer, error) {
	return startConfPeer(repo, pp, "tinyproxy", nil, nil, func(conf string) []string { return []string{"-d", "-c", conf} })
}

func startMicrosocks(pp *ports) (*peer, error) {
	bin, err := exec.LookPath("microsocks")
	if err != nil {
		return nil, errNotInstalled
	}
	p := &peer{Name: "microsocks"}
	if p.dir, err = peerDir("microsocks"); err != nil {
		return nil, err
	}
	port, err := pp.take()
	if err != nil {
		return nil, err
	}
	p.SOCKS = addr(port)
	return p, startCmd(p, bin, "-i", "127.0.0.1", "-p", strconv.Itoa(port), "-u", benchUser, "-P", benchPass)
}

// startDante runs danted (Debian dante-server) from
// testdata/peers/danted.conf, for the udp workloads.
func startDante(repo string, pp *ports) (*peer, error) {
	bin, err := exec.LookPath("danted")
	if err != nil {
		return nil, errNotInstalled
	}
	p := &peer{Name: "dante", UDP: true, UDPOnly: true, NoAuth: true}
	if p.dir, err = peerDir("dante"); err != nil {
		return nil, err
	}
	port, err := pp.take()
	if err != nil {
		return nil, err
	}
	p.SOCKS = addr(port)
	conf, err := render(repo, "danted", p.dir, port, nil)
	if err != nil {
		return nil, err
	}
	return p, startCmd(p, bin, "-f", conf)
}

var errNotInstalled = errors.New("not installed")

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/net/proxy"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Write then rename, as an operator's editor or config tool would:
	// a reload never reads half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func bcryptEntry(t *testing.T, name, pass string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return name + ":" + string(h)
}

// startWithFiles starts rotor in process on a pool file and a users file
// written from the given contents.
func startWithFiles(t *testing.T, poolFile, usersFile string, mutate ...func(*config.Config)) *rotor {
	t.Helper()
	dir := t.TempDir()
	pf, uf := filepath.Join(dir, "pool"), filepath.Join(dir, "users")
	writeFile(t, pf, poolFile)
	writeFile(t, uf, usersFile)
	cfg := func(c *config.Config) {
		var err error
		c.PoolFile, c.UsersFile, c.Shortcut = pf, uf, nil
		if c.Pool, c.Upstreams, c.PoolTags, err = config.ReadPoolFile(pf); err != nil {
			t.Fatal(err)
		}
		if c.Users, err = config.ReadUsers(*c); err != nil {
			t.Fatal(err)
		}
	}
	return startRotor(t, append([]func(*config.Config){cfg}, mutate...)...)
}

// rotor passwd prints a line that, in a users file, lets that password in
// over HTTP and SOCKS5, and no other.
func TestPasswdAndUsersFile(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(rotorBinary(t), "passwd", "--cost", "4", "alice")
	cmd.Stdin = strings.NewReader("correct horse battery\n")
	out, err := cmd.Output()
	if err != nil || !strings.HasPrefix(string(out), "alice:$2y$04$") {
		t.Fatalf("rotor passwd: %q, %v", out, err)
	}
	if err := exec.Command(rotorBinary(t), "passwd", "alice", "extra").Run(); err == nil {
		t.Fatal("rotor passwd took a second argument (a password on the command line?)")
	}
	// A cost the users file would refuse is refused here first.
	high := exec.Command(rotorBinary(t), "passwd", "--cost", "17", "alice")
	high.Stdin = strings.NewReader("x\n")
	if msg, err := high.CombinedOutput(); err == nil || !strings.Contains(string(msg), "--cost 17: want 4 to 16") {
		t.Fatalf("rotor passwd --cost 17: %q, %v", msg, err)
	}
	peer := tcpTarget(t, target.WritePeer)
	r := startWithFiles(t, "127.0.0.2\n127.0.0.3\n", "# users\n"+string(out))
	ctx := context.Background()
	if _, err := socksVia(ctx, r.sock, "alice", "correct horse battery", peer.Addr); err != nil {
		t.Errorf("SOCKS5 with the password: %v", err)
	}
	if _, err := connectVia(ctx, r.http, "alice", "correct horse battery", peer.Addr); err != nil {
		t.Errorf("CONNECT with the password: %v", err)
	}
	if _, err := connectVia(ctx, r.http, "alice", "correct horse", peer.Addr); err == nil || !strings.Contains(err.Error(), "407") {
		t.Errorf("CONNECT with a wrong password: %v, want 407", err)
	}
	if _, err := socksVia(ctx, r.sock, testUser, testPass, peer.Addr); err == nil {
		t.Error("a user not in the file got in")
	}
}

// Each user's requests leave only from its pool: a tag of the pool file,
// an entry, or (no pool=) the whole pool.
func TestUserPools(t *testing.T) {
	t.Parallel()
	peer := tcpTarget(t, target.WritePeer)
	ht := httpTarget(t)
	r := startWithFiles(t,
		"127.0.0.2 team-a\n127.0.0.3 team-a team-b\n127.0.0.4\n127.0.0.5 team-b\n",
		"alice:{PLAIN}pa pool=team-a\nbob:{PLAIN}pb pool=team-b,127.0.0.4\ncarol:{PLAIN}pc\n")
	ctx := context.Background()
	for user, want := range map[string][]string{
		"alice": {"127.0.0.2", "127.0.0.3"},
		"bob":   {"127.0.0.3", "127.0.0.4", "127.0.0.5"},
		"carol": {"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"},
	} {
		pass := "p" + user[:1]
		client := proxyClient("http://"+user+":"+pass+"@"+r.http, 1)
		seen := map[string]int{}
		for i := 0; i < 12; i++ {
			for _, do := range r.paths(ctx, client, user, pass, "http://"+ht.Addr+"/ip", peer.Addr) {
				got, err := do()
				if err != nil {
					t.Fatalf("%s: %v", user, err)
				}
				seen[got]++
			}
		}
		client.CloseIdleConnections()
		if len(seen) != len(want) {
			t.Errorf("%s left from %v, want exactly %v", user, seen, want)
		}
		for _, a := range want {
			if seen[a] != 36/len(want) {
				t.Errorf("%s: %s used %d times of 36, want %d (all: %v)", user, a, seen[a], 36/len(want), seen)
			}
		}
	}
}

// max-conns caps a user's concurrent tunnels and requests (429 / SOCKS5
// 0x01 beyond), and rate= its requests per second; other users are not
// affected.
func TestUserLimits(t *testing.T) {
	t.Parallel()
	echo := tcpTarget(t, target.Echo)
	peer := tcpTarget(t, target.WritePeer)
	r := startWithFiles(t, "127.0.0.2\n127.0.0.3\n",
		"alice:{PLAIN}pa max-conns=2\nbob:{PLAIN}pb rate=0.5/s burst=2\ncarol:{PLAIN}pc\n")
	ctx := context.Background()
	tunnel := func(user, pass string) (net.Conn, error) {
		d, _ := proxy.SOCKS5("tcp", r.sock, &proxy.Auth{User: user, Password: pass}, proxy.Direct)
		return d.Dial("tcp", echo.Addr)
	}
	a1, err := tunnel("alice", "pa")
	if err != nil {
		t.Fatal(err)
	}
	a2, err := connectRaw(r.http, "alice", "pa", echo.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tunnel("alice", "pa"); err == nil || !strings.Contains(err.Error(), "general SOCKS server failure") {
		t.Errorf("third SOCKS5 tunnel: %v, want reply 0x01", err)
	}
	if _, err := connectVia(ctx, r.http, "alice", "pa", peer.Addr); err == nil || !strings.Contains(err.Error(), "429") {
		t.Errorf("third CONNECT: %v, want 429", err)
	}
	if _, err := socksVia(ctx, r.sock, "carol", "pc", peer.Addr); err != nil {
		t.Errorf("another user at alice's cap: %v", err)
	}
	a1.Close()
	if n := waitCount(func() int64 {
		c, err := tunnel("alice", "pa")
		if err != nil {
			return 0
		}
		c.Close()
		return 1
	}, 1); n != 1 {
		t.Error("a closed tunnel did not give its slot back")
	}
	a2.Close()

	ok, limited := 0, 0
	for i := 0; i < 5; i++ {
		_, err := connectVia(ctx, r.http, "bob", "pb", peer.Addr)
		switch {
		case err == nil:
			ok++
		case strings.Contains(err.Error(), "429"):
			limited++
		default:
			t.Fatal(err)
		}
	}
	// A burst of 2, then one every 2 s: 5 requests at once get 2 through
	// (3 if this machine took over 2 s for them).
	if ok < 2 || ok > 3 || limited != 5-ok {
		t.Errorf("rate 0.5/s burst 2: %d ok, %d got 429; want 2 ok", ok, limited)
	}
	if !strings.Contains(r.waitLog(`"limit":"user-rate"`, `"limit":"user-max-conns"`), `"limit":"user-rate"`) {
		t.Error("user limits not logged")
	}
}

// connectRaw opens a CONNECT tunnel and returns it open.
func connectRaw(proxyAddr, user, pass, addr string) (net.Conn, error) {
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		return nil, err
	}
	if err := writeConnect(c, user, pass, addr, ""); err != nil {
		c.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("CONNECT: %v %v", resp, err)
	}
	return c, nil
}

// dialFrom returns a dialer whose connections come from local (a
// loopback address), to play a client on another network.
func dialFrom(local string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
}

// Clients from --allow-clients networks need no credentials: SOCKS5
// method 0x00 and HTTP without Proxy-Authorization. Everyone else still
// authenticates.
func TestAllowClients(t *testing.T) {
	t.Parallel()
	peer := tcpTarget(t, target.WritePeer)
	ht := httpTarget(t)
	r := startRotor(t, func(c *config.Config) {
		c.AllowClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")}
	})
	for _, tc := range []struct {
		from  string
		allow bool
	}{{"127.0.0.9", true}, {"127.0.0.10", false}} {
		// SOCKS5 offering only "no authentication".
		d, _ := proxy.SOCKS5("tcp", r.sock, nil, dialFrom(tc.from))
		c, err := d.Dial("tcp", peer.Addr)
		if tc.allow && err != nil {
			t.Errorf("SOCKS5 without credentials from %s: %v", tc.from, err)
		}
		if !tc.allow && err == nil {
			t.Errorf("SOCKS5 without credentials from %s got in", tc.from)
		}
		if c != nil {
			c.Close()
		}
		// HTTP without credentials.
		pu, _ := url.Parse("http://" + r.http)
		tr := &http.Transport{Proxy: http.ProxyURL(pu), DialContext: dialFrom(tc.from).DialContext}
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://" + ht.Addr + "/ip")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := http.StatusOK
		if !tc.allow {
			want = http.StatusProxyAuthRequired
		}
		if resp.StatusCode != want {
			t.Errorf("HTTP without credentials from %s: %s, want %d", tc.from, resp.Status, want)
		}
		tr.CloseIdleConnections()
		// With credentials, both get in.
		d, _ = proxy.SOCKS5("tcp", r.sock, &proxy.Auth{User: testUser, Password: testPass}, dialFrom(tc.from))
		if c, err := d.Dial("tcp", peer.Addr); err != nil {
			t.Errorf("SOCKS5 with credentials from %s: %v", tc.from, err)
		} else {
			c.Close()
		}
	}
}

// --per-ip-rate: no source address is used more often than its rate
// allows; a source without a token is skipped for one with a token; with
// none within --per-ip-wait, 429 / SOCKS5 0x01.
func TestPerIPRate(t *testing.T) {
	var mu sync.Mutex
	uses := map[string][]time.Time{}
	peer := tcpTarget(t, func(c *net.TCPConn) {
		ip := target.PeerIP(c.RemoteAddr().String())
		mu.Lock()
		uses[ip] = append(uses[ip], time.Now())
		mu.Unlock()
		target.WritePeer(c)
	})
	ctx := context.Background()
	// 0.5/s, burst 1: every address once, then nothing for 2 s.
	r := startRotor(t, func(c *config.Config) {
		c.PerIPRate, c.PerIPBurst, c.PerIPWait = 0.5, 1, 100*time.Millisecond
	})
	seen := map[string]bool{}
	for i := 0; i < 4; i++ {
		got, err := socksVia(ctx, r.sock, testUser, testPass, peer.Addr)
		if err != nil {
			t.Fatal(err)
		}
		seen[got] = true
	}
	if len(seen) != 4 {
		t.Errorf("4 requests used %v, want each address once", seen)
	}
	if _, err := socksVia(ctx, r.sock, testUser, testPass, peer.Addr); err == nil || !strings.Contains(err.Error(), "general SOCKS server failure") {
		t.Errorf("5th SOCKS5 request: %v, want 0x01", err)
	}
	if _, err := connectVia(ctx, r.http, testUser, testPass, peer.Addr); err == nil || !strings.Contains(err.Error(), "429") {
		t.Errorf("5th CONNECT: %v, want 429", err)
	}
	r.waitLog(`"limit":"per-ip-rate"`)

	// 2/s, burst 1, a generous wait: 12 requests all go through, and no
	// address serves two within less than its 500 ms interval.
	mu.Lock()
	clear(uses)
	mu.Unlock()
	r = startRotor(t, func(c *config.Config) { c.PerIPRate, c.PerIPBurst, c.PerIPWait = 2, 1, 5*time.Second })
	for i := 0; i < 12; i++ {
		if _, err := socksVia(ctx, r.sock, testUser, testPass, peer.Addr); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for ip, ts := range uses {
		total += len(ts)
		// 3 each when the 12 take about a second; a slow machine may let
		// one address earn a 4th token before another's 3rd.
		if len(ts) < 2 || len(ts) > 4 {
			t.Errorf("%s used %d times of 12, want about 3", ip, len(ts))
		}
		for i := 1; i < len(ts); i++ {
			// The target sees a connection some time after rotor took its
			// token, which a busy machine stretches: allow 150 ms of that.
			// Without the limit the gap is a few milliseconds.
			if gap := ts[i].Sub(ts[i-1]); gap < 350*time.Millisecond {
				t.Errorf("%s used twice within %s, want >= 500 ms apart", ip, gap)
			}
		}
	}
	if total != 12 || len(uses) != 4 {
		t.Errorf("%d uses over %d addresses, want 12 over 4", total, len(uses))
	}
}

// socksOnlyUserPass connects from local to dst through the SOCKS5
// listener, offering only method 0x02 with user and pass, and returns
// what the WritePeer target wrote.
func socksOnlyUserPass(t *testing.T, sock, local, user, pass, dst string) (string, error) {
	t.Helper()
	c, err := dialFrom(local).Dial("tcp", sock)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(append(socksHelloAs(user, pass), socksConnect(netip.MustParseAddrPort(dst))...)); err != nil {
		return "", err
	}
	br := bufio.NewReader(c)
	var greet, status [2]byte
	if _, err := io.ReadFull(br, greet[:]); err != nil {
		return "", err
	}
	if _, err := io.ReadFull(br, status[:]); err != nil || status[1] != 0 {
		return "", fmt.Errorf("auth status %v: %v", status, err)
	}
	reply := make([]byte, 10)
	if _, err := io.ReadFull(br, reply); err != nil || reply[1] != 0 {
		return "", fmt.Errorf("reply %v: %v", reply, err)
	}
	line, err := br.ReadString('\n')
	return strings.TrimSpace(line), err
}

// A name rotor did not check against configured users (there are none:
// --allow-clients alone) is never logged as "user" but as
// "unverified_user", and its session parameters are honoured, over SOCKS5
// (a trusted client offering only 0x02) and HTTP. A failed login's name
// is unverified too; a checked one is "user".
func TestUnverifiedNames(t *testing.T) {
	t.Parallel()
	peer := tcpTarget(t, target.WritePeer)
	ht := httpTarget(t)
	r := startRotor(t, func(c *config.Config) {
		c.Users = nil
		c.AllowClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")}
	})
	seen := map[string]int{}
	for range 4 {
		got, err := socksOnlyUserPass(t, r.sock, "127.0.0.9", "mallory-session-k1", "anything", peer.Addr)
		if err != nil {
			t.Fatalf("trusted SOCKS5 client offering only 0x02: %v", err)
		}
		seen[got]++
	}
	pu, _ := url.Parse("http://mallory-session-k2:anything@" + r.http)
	for range 4 {
		// A connection per request, so that the address is the
		// session's and not the kept-alive connection's.
		tr := &http.Transport{Proxy: http.ProxyURL(pu), DialContext: dialFrom("127.0.0.9").DialContext, DisableKeepAlives: true}
		got, err := getVia(context.Background(), &http.Client{Transport: tr, Timeout: 5 * time.Second}, "http://"+ht.Addr+"/ip")
		if err != nil {
			t.Fatalf("trusted HTTP client with a name: %v", err)
		}
		seen["http "+got]++
	}
	if len(seen) != 2 {
		t.Errorf("sessions k1 (SOCKS5) and k2 (HTTP) used %v, want one address each", seen)
	}
	// Each line is written as its request ends, just after the answer.
	logs := r.waitLog(`"unverified_user":"mallory"`)
	for end := time.Now().Add(5 * time.Second); strings.Count(logs, `"unverified_user":"mallory"`) < 8 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
		logs = r.log.String()
	}
	if strings.Contains(logs, `"user":"mallory`) {
		t.Errorf("an unchecked name was logged as user:\n%s", logs)
	}
	if n := strings.Count(logs, `"unverified_user":"mallory"`); n < 8 {
		t.Errorf("%d log lines name mallory as unverified, want 8", n)
	}

	// With users: a wrong password's name is unverified, a right one is
	// the user.
	withUsers := startRotor(t)
	if _, err := socksOnlyUserPass(t, withUsers.sock, "127.0.0.1", "mallory", "guess", peer.Addr); err == nil {
		t.Fatal("wrong password accepted")
	}
	if _, err := socksOnlyUserPass(t, withUsers.sock, "127.0.0.1", testUser, testPass, peer.Addr); err != nil {
		t.Fatal(err)
	}
	logs = withUsers.waitLog(`"user":"` + testUser + `"`)
	if !strings.Contains(withUsers.waitLog(`"unverified_user":"mallory"`), `"unverified_user":"mallory"`) || strings.Contains(logs, `"user":"mallory"`) {
		t.Errorf("failed login's name not logged apart:\n%s", logs)
	}
}

package pool

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/dest"
)

func TestParseUpstream(t *testing.T) {
	for _, tc := range []struct {
		in, label, err string
		kind           UpstreamKind
		user, pass     string
		session        bool
	}{
		{in: "socks5://10.0.0.1:1080", label: "socks5://10.0.0.1:1080", kind: SOCKS5Upstream},
		{in: "socks5h://u:p@proxy.example:1080", label: "socks5://***@proxy.example:1080", kind: SOCKS5Upstream, user: "u", pass: "p"},
		{in: "http://u:p%2Cw@[2001:db8::1]:3128?session=pass", label: "http://***@[2001:db8::1]:3128", kind: HTTPUpstream, user: "u", pass: "p,w", session: true},
		{in: "http://proxy.example", err: "want socks5://"},
		{in: "https://u:secret@proxy.example:443", label: "https://***@proxy.example:443", kind: HTTPSUpstream, user: "u", pass: "secret"},
		{in: "ftp://u:secret@x:1", err: `scheme "ftp"`},
		{in: "https://u:secret@x:1?ca=/nonexistent", err: "ca=/nonexistent"},
		{in: "socks5://u:secret@x:0", err: "port"},
		{in: "socks5://u:secret@x:1/path", err: "want socks5://"},
		{in: "socks5://u:secret@x:1?via=nowhere", err: "want a local IP address"},
		{in: "socks5://u:secret@x:1?hop=2", err: "unknown parameter"},
		{in: "socks5://x:1?session=pass", err: "needs a user name"},
		{in: "socks5://:secret@x:1", err: "1-255 bytes"},
		{in: "socks5://u:sec ret@x:1\x7f", err: "want socks5://"},
	} {
		up, err := ParseUpstream(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want an error with %q", tc.in, err, tc.err)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("%q: the error shows the password: %v", tc.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if up.Label() != tc.label || up.Kind != tc.kind || up.User != tc.user || up.Pass != tc.pass || up.SessionPass != tc.session {
			t.Errorf("%q: %+v", tc.in, up)
		}
	}
}

func FuzzParseUpstream(f *testing.F) {
	for _, s := range []string{"socks5://u:p@h:1", "http://[::1]:8080?session=pass", "http://a:b@c@d:1", "socks5://%zz@h:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		up, err := ParseUpstream(s)
		if err != nil {
			return
		}
		if up.Pass != "" && len(up.Pass) > 2 && strings.Contains(up.Label(), up.Pass) {
			t.Fatalf("label %q shows the password of %q", up.Label(), s)
		}
		if _, _, err := net.SplitHostPort(up.Addr); err != nil {
			t.Fatalf("%q: address %q: %v", s, up.Addr, err)
		}
	})
}

// fakeUpstream serves one connection with serve and returns its address.
func fakeUpstream(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func upstreamEgress(t *testing.T, entry string) Egress {
	t.Helper()
	up, err := ParseUpstream(entry)
	if err != nil {
		t.Fatal(err)
	}
	return Egress{Src: &Source{Up: up, Label: up.Label()}, Session: Session{Key: "k1", TTL: time.Minute}}
}

// An HTTP upstream's answer is read to its end and no further: a banner
// the target sent at once stays for the tunnel. Rotor's credentials for
// it go in Proxy-Authorization, with the session appended.
func TestHTTPUpstreamKeepsBytesAfterTheHead(t *testing.T) {
	got := make(chan string, 1)
	addr := fakeUpstream(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		var head strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			head.WriteString(line)
			if line == "\r\n" {
				break
			}
		}
		got <- head.String()
		_, _ = io.WriteString(c, "HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\nSSH-2.0-banner\r\n")
	})
	d := NewDialer(nil, DialerOptions{Timeout: 5 * time.Second})
	c, err := d.viaUpstream(context.Background(), upstreamEgress(t, "http://alice:pw@"+addr+"?session=pass"), "example.com", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	head := <-got
	// alice-session-k1-ttl-1m0s:pw
	if !strings.HasPrefix(head, "CONNECT example.com:22 HTTP/1.1\r\n") || !strings.Contains(head, "Proxy-Authorization: Basic YWxpY2Utc2Vzc2lvbi1rMS10dGwtMW0wczpwdw==\r\n") {
		t.Errorf("upstream got %q", head)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "SSH-2.0-banner\r\n" {
		t.Fatalf("tunnel starts with %q, %v; want the banner", line, err)
	}
}

// Hostile and failing upstreams: each is an error of the right class, and
// only the upstream's own failures count toward taking it out.
func TestUpstreamFailures(t *testing.T) {
	for _, tc := range []struct {
		name, scheme string
		serve        func(c net.Conn)
		upstream     bool  // ErrUpstream: counts toward health
		is           error // and errors.Is this
	}{
		{"407", "http://u:p@", func(c net.Conn) {
			_, _ = io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
		}, true, ErrUpstreamAuth},
		{"502 is the target's", "http://", func(c net.Conn) { _, _ = io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n") }, false, syscall.ECONNREFUSED},
		{"403 is forbidden", "http://", func(c net.Conn) { _, _ = io.WriteString(c, "HTTP/1.1 403 Forbidden\r\n\r\n") }, false, dest.ErrForbidden},
		{"endless head", "http://", func(c net.Conn) {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n")
			for i := 0; i < 2000; i++ {
				if _, err := io.WriteString(c, "X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"); err != nil {
					return
				}
			}
		}, true, nil},
		{"not HTTP", "http://", func(c net.Conn) { _, _ = io.WriteString(c, "SSH-2.0-x\r\n\r\n") }, true, nil},
		{"closes at once", "socks5://", func(c net.Conn) {}, true, nil},
		{"SOCKS5 auth refused", "socks5://u:p@", func(c net.Conn) {
			buf := make([]byte, 64)
			_, _ = c.Read(buf)
			_, _ = c.Write([]byte{5, 2, 1, 1})
		}, true, ErrUpstreamAuth},
		{"SOCKS5 refused target", "socks5://", func(c net.Conn) {
			buf := make([]byte, 64)
			_, _ = c.Read(buf)
			_, _ = c.Write([]byte{5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0})
		}, false, syscall.ECONNREFUSED},
		{"SOCKS5 lying address type", "socks5://", func(c net.Conn) {
			buf := make([]byte, 64)
			_, _ = c.Read(buf)
			_, _ = c.Write([]byte{5, 0, 5, 0, 0, 9, 0, 0})
		}, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeUpstream(t, tc.serve)
			d := NewDialer(nil, DialerOptions{Timeout: 5 * time.Second, UpstreamFall: 1})
			e := upstreamEgress(t, tc.scheme+addr)
			c, err := d.viaUpstream(context.Background(), e, "192.0.2.1", 80)
			if err == nil {
				c.Close()
				t.Fatal("no error")
			}
			if errors.Is(err, ErrUpstream) != tc.upstream || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("%v: upstream's fault %v, want %v (and %v)", err, errors.Is(err, ErrUpstream), tc.upstream, tc.is)
			}
			if e.Src.Down() != tc.upstream {
				t.Errorf("entry down %v after %v, want %v", e.Src.Down(), err, tc.upstream)
			}
			if strings.Contains(err.Error(), ":p@") {
				t.Errorf("error shows credentials: %v", err)
			}
		})
	}
}

// A literal target the policy forbids is refused before the upstream is
// asked, and so is a name that is this host by definition.
func TestUpstreamPolicy(t *testing.T) {
	d := NewDialer(nil, DialerOptions{Timeout: time.Second, Policy: dest.NewPolicy(nil, nil)})
	e := upstreamEgress(t, "socks5://127.0.0.1:1")
	for _, host := range []string{"127.0.0.1", "169.254.169.254", "localhost", "db.localhost."} {
		if _, err := d.viaUpstream(context.Background(), e, host, 80); !errors.Is(err, dest.ErrForbidden) {
			t.Errorf("%s: %v, want forbidden", host, err)
		}
	}
	if e.Src.Down() {
		t.Error("a refused target took the upstream out")
	}
}

// Sessions spread over upstream entries by rendezvous hashing on the entry
// as configured, as they do over addresses; the same key picks the same
// entry in another pool built from the same entries (another gateway).
func TestSessionsOverUpstreamEntries(t *testing.T) {
	var ups, ups2 []*Upstream
	for _, e := range []string{"socks5://10.0.0.1:1080", "socks5://10.0.0.2:1080", "http://u:p@10.0.0.3:3128"} {
		a, _ := ParseUpstream(e)
		b, _ := ParseUpstream(e)
		ups, ups2 = append(ups, a), append(ups2, b)
	}
	p, err := NewEntries(nil, ups, RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := NewEntries(nil, ups2, RoundRobin)
	per := map[string]int{}
	now := time.Now()
	for i := 0; i < 300; i++ {
		s := Session{Key: "k" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + string(rune('a'+i/26))}
		a, _ := p.PickSession(Any, s, now)
		b, _ := q.PickSession(Any, s, now)
		if a.Label != b.Label {
			t.Fatalf("session %q: %s in one pool, %s in the other", s.Key, a.Label, b.Label)
		}
		per[a.Label]++
	}
	for _, up := range ups {
		if per[up.Label()] < 60 {
			t.Errorf("sessions per entry %v: uneven", per)
		}
	}
}

// tlsUpstream serves one TLS connection with serve, on a certificate for
// 127.0.0.1, and returns its address and a CA file that trusts it.
func tlsUpstream(t *testing.T, serve func(c net.Conn)) (addr, caFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	return fakeUpstream(t, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		if tc.Handshake() == nil {
			serve(tc)
		}
	}), caFile
}

// Through an https:// upstream the answer to CONNECT is read through a
// buffer: a banner that came in the same TLS record is handed back first,
// and an endless head is bounded.
func TestHTTPSUpstreamAnswer(t *testing.T) {
	d := NewDialer(nil, DialerOptions{Timeout: 5 * time.Second, UpstreamFall: 1})
	addr, ca := tlsUpstream(t, func(c net.Conn) {
		_, _ = bufio.NewReader(c).ReadString('\n')
		_, _ = io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-banner\r\n")
		time.Sleep(100 * time.Millisecond)
	})
	c, err := d.viaUpstream(context.Background(), upstreamEgress(t, "https://"+addr+"?ca="+ca), "192.0.2.1", 22)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil || line != "SSH-2.0-banner\r\n" {
		t.Fatalf("tunnel starts with %q, %v", line, err)
	}

	endless, ca2 := tlsUpstream(t, func(c net.Conn) {
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n")
		for i := 0; i < 1000; i++ {
			if _, err := io.WriteString(c, "X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"); err != nil {
				return
			}
		}
	})
	e := upstreamEgress(t, "https://"+endless+"?ca="+ca2)
	if _, err := d.viaUpstream(context.Background(), e, "192.0.2.1", 22); !errors.Is(err, ErrUpstream) || !e.Src.Down() {
		t.Fatalf("endless head: %v (down %v), want an upstream failure", err, e.Src.Down())
	}
}

package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/serve"
)

// tlsFiles writes a self-signed certificate for localhost and 127.0.0.1
// (rotor cert's) into dir and returns the files and the parsed pair.
func tlsFiles(t *testing.T, dir, name string) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	certPEM, keyPEM, err := selfSigned([]string{"localhost", "127.0.0.1"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writeFile(t, certFile, string(certPEM))
	writeFile(t, keyFile, string(keyPEM))
	b, _ := pem.Decode(certPEM)
	if cert, err = x509.ParseCertificate(b.Bytes); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, cert
}

// tlsRotor is a rotor with the HTTPS listener and the mixed port (TLS
// side on), on the certificate in certFile.
type tlsRotor struct {
	*rotor
	https, mixed string
	certFile     string
	cert         *x509.Certificate // the proxy's
	roots        *x509.CertPool    // holding cert
}

func startTLSRotor(t *testing.T, mutate ...func(*config.Config)) *tlsRotor {
	t.Helper()
	certFile, keyFile, cert := tlsFiles(t, t.TempDir(), "proxy")
	r := startRotor(t, append([]func(*config.Config){func(c *config.Config) {
		c.HTTPSListen, c.MixedListen = "127.0.0.1:0", "127.0.0.1:0"
		c.TLSCert, c.TLSKey = certFile, keyFile
	}}, mutate...)...)
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	return &tlsRotor{rotor: r, https: r.httpsAddr.String(), mixed: r.mixedAddr.String(), certFile: certFile, cert: cert, roots: roots}
}

// pemFile writes the certificates of TLS test servers into one PEM file,
// for clients that take a CA bundle.
func pemFile(t *testing.T, certs ...*x509.Certificate) string {
	t.Helper()
	var b strings.Builder
	for _, c := range certs {
		b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	f := filepath.Join(t.TempDir(), "bundle.pem")
	writeFile(t, f, b.String())
	return f
}

// Real clients through an https:// proxy URL, the HTTPS listener and the
// mixed port's TLS side alike: curl, Go's net/http and Python requests,
// absolute-form and CONNECT; every request rotates.
func TestHTTPSProxyClients(t *testing.T) {
	t.Parallel()
	curl := needCurl(t)
	py := python3WithClients(t)
	ht := httpTarget(t)
	tlsT := tlsTarget(t)
	r := startTLSRotor(t)
	creds := testUser + ":" + testPass
	bundle := pemFile(t, tlsT.Certificate())
	for _, port := range []struct{ name, addr string }{{"https", r.https}, {"mixed", r.mixed}} {
		proxyURL := "https://" + creds + "@" + port.addr
		t.Run(port.name, func(t *testing.T) {
			seen := map[string]int{}
			note := func(got string, err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
				if got = strings.TrimSpace(got); !slices.Contains(poolAddrs, got) {
					t.Fatalf("target saw %q, want a pool address", got)
				}
				seen[got]++
			}
			for _, args := range [][]string{
				{"-x", proxyURL, "http://" + ht.Addr + "/ip"},                                        // absolute-form inside TLS
				{"-x", proxyURL, "-p", "http://" + ht.Addr + "/ip"},                                  // CONNECT inside TLS
				{"-x", proxyURL, "--cacert", bundle, tlsT.URL + "/"},                                 // TLS inside TLS
				{"-x", "https://" + creds + "@localhost:" + portOf(port.addr), "-k", tlsT.URL + "/"}, // by name
			} {
				out, err := exec.Command(curl, append([]string{"-sS", "--fail", "--max-time", "10", "--noproxy", "", "--proxy-cacert", r.certFile}, args...)...).CombinedOutput()
				if err != nil {
					t.Fatalf("curl %v: %v\n%s", args, err, out)
				}
				note(string(out), nil)
			}
			// Go's net/http with an https:// proxy URL.
			u, _ := url.Parse(proxyURL)
			tlsRoots := x509.NewCertPool()
			tlsRoots.AddCert(tlsT.Certificate())
			tr := &http.Transport{Proxy: http.ProxyURL(u), DisableKeepAlives: true,
				TLSClientConfig: &tls.Config{RootCAs: tlsRoots}}
			// The proxy's certificate: Go verifies it with the same
			// config; both CAs go in.
			tr.TLSClientConfig.RootCAs.AddCert(r.cert)
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			note(getVia(context.Background(), c, "http://"+ht.Addr+"/ip"))
			note(getVia(context.Background(), c, tlsT.URL+"/"))
			tr.CloseIdleConnections()
			// Python requests (urllib3): CONNECT inside TLS to an https
			// target, which verifies the proxy against verify=, and
			// absolute-form for an http target.
			pyBundle := pemFile(t, tlsT.Certificate(), r.cert)
			script := `import sys, requests
p = {"http": sys.argv[1], "https": sys.argv[1]}
for u in sys.argv[3:]:
    print(requests.get(u, proxies=p, verify=sys.argv[2], timeout=10).text.strip())`
			py := exec.Command(py, "-c", script, proxyURL, pyBundle, tlsT.URL+"/", "http://"+ht.Addr+"/ip")
			var stderr strings.Builder
			py.Stderr = &stderr
			out, err := py.Output()
			if err != nil {
				t.Fatalf("python requests: %v\n%s%s", err, out, stderr.String())
			}
			for _, line := range strings.Fields(string(out)) {
				note(line, nil)
			}
			// 4 curl + 2 Go + 2 Python requests, in a row: each address twice.
			wantEach(t, seen, 2)
		})
	}

	t.Run("wrong password is 407 inside TLS", func(t *testing.T) {
		out, _ := exec.Command(curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--noproxy", "", "--proxy-cacert", r.certFile,
			"-x", "https://"+testUser+":wrong@"+r.https, "http://"+ht.Addr+"/ip").Output()
		if string(out) != "407" {
			t.Fatalf("status %s, want 407", out)
		}
	})
	t.Run("a certificate the client does not trust is refused by it", func(t *testing.T) {
		err := exec.Command(curl, "-sS", "--noproxy", "", "--max-time", "10", "-x", "https://"+creds+"@"+r.https, "http://"+ht.Addr+"/ip").Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 60 {
			t.Fatalf("curl without the proxy's CA: %v, want exit 60 (peer certificate cannot be authenticated)", err)
		}
		u, _ := url.Parse("https://" + creds + "@" + r.https)
		c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(u)}, Timeout: 10 * time.Second}
		var unknown x509.UnknownAuthorityError
		if _, err := getVia(context.Background(), c, "http://"+ht.Addr+"/ip"); err == nil || !strings.Contains(err.Error(), unknown.Error()[:20]) {
			t.Fatalf("Go client without the proxy's CA: %v, want an unknown authority error", err)
		}
		r.waitLog(`"listener":"https"`, "TLS handshake failed")
	})
}

func portOf(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

// One port for every protocol: curl --socks5-hostname, -x http:// and -x
// https://, Python requests socks5h:// and http://, all rotating through
// one pool in one order.
func TestMixedPortClients(t *testing.T) {
	t.Parallel()
	curl := needCurl(t)
	py := python3WithClients(t)
	if exec.Command(py, "-c", "import socks").Run() != nil {
		t.Fatal("PySocks missing; .ci/run must install python3-socks")
	}
	ht := httpTarget(t)
	r := startTLSRotor(t)
	creds := testUser + ":" + testPass
	ipURL := "http://localhost:" + portOf(ht.Addr) + "/ip"
	var got []string
	for _, args := range [][]string{
		{"--socks5-hostname", r.mixed, "--proxy-user", creds},
		{"-x", "http://" + creds + "@" + r.mixed},
		{"-x", "https://" + creds + "@" + r.mixed, "--proxy-cacert", r.certFile},
		{"-x", "http://" + creds + "@" + r.mixed, "-p"},
	} {
		out, err := exec.Command(curl, append(append([]string{"-sS", "--fail", "--max-time", "10", "--noproxy", ""}, args...), ipURL)...).CombinedOutput()
		if err != nil {
			t.Fatalf("curl %v: %v\n%s", args, err, out)
		}
		got = append(got, strings.TrimSpace(string(out)))
	}
	script := `import sys, requests
for p in sys.argv[2:]:
    print(requests.get(sys.argv[1], proxies={"http": p}, timeout=10).text.strip())`
	out, err := exec.Command(py, "-c", script, ipURL, "socks5h://"+creds+"@"+r.mixed, "http://"+creds+"@"+r.mixed,
		"socks5h://"+creds+"@"+r.mixed, "http://"+creds+"@"+r.mixed).CombinedOutput()
	if err != nil {
		t.Fatalf("python requests: %v\n%s", err, out)
	}
	got = append(got, strings.Fields(string(out))...)
	// Round-robin over one pool: whatever the protocol, the next address.
	want := append(append([]string{}, poolAddrs...), poolAddrs...)
	if !slices.Equal(got, want) {
		t.Fatalf("sources in order %v, want %v", got, want)
	}
	logs := r.waitLog(`"proto":"socks5"`)
	for _, proto := range []string{`"proto":"socks5"`, `"proto":"http"`, `"proto":"connect"`} {
		if !strings.Contains(logs, proto) || !strings.Contains(logs, `"listener":"mixed"`) {
			t.Errorf("no %s line under listener mixed:\n%s", proto, logs)
		}
	}
}

// Plain HTTP to the HTTPS listener and garbage on the mixed port fail at
// once, with a line saying what was seen; TLS to a mixed port without a
// certificate too.
func TestTLSWrongFirstBytes(t *testing.T) {
	t.Parallel()
	r := startTLSRotor(t, func(c *config.Config) { c.HandshakeTimeout = time.Minute; c.MetricsListen = "127.0.0.1:0" })
	exchange := func(addr, send string) string {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// Far below the handshake timeout: an answer or a close comes at once.
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, send); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("%s: no answer and no close: %v", addr, err)
		}
		return string(b)
	}
	got := exchange(r.https, "CONNECT 127.0.0.1:1 HTTP/1.1\r\nProxy-Authorization: Basic "+
		base64.StdEncoding.EncodeToString([]byte(testUser+":"+testPass))+"\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.0 400") || !strings.Contains(got, "https://") {
		t.Errorf("plain HTTP to the HTTPS listener got %q", got)
	}
	if got := exchange(r.mixed, "\x01\x02\x03 not a protocol\r\n\r\n"); got != "" {
		t.Errorf("garbage on the mixed port got %q, want a close", got)
	}
	logs := r.waitLog("plain HTTP on a TLS listener", `"first_bytes":"010203206e6f742061`)
	if !strings.Contains(logs, `"first_bytes":"\"CONNE\""`) || !strings.Contains(logs, "mixed port: first bytes are neither") {
		t.Errorf("log does not say what was seen:\n%s", logs)
	}
	if strings.Contains(logs, testPass) || strings.Contains(logs, base64.StdEncoding.EncodeToString([]byte(testUser+":"+testPass))) {
		t.Errorf("a credential reached the log:\n%s", logs)
	}
	resp, err := http.Get("http://" + r.metricsLn.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `rotor_listener_tls_handshake_failures_total{listener="https"} 1`) {
		t.Errorf("the failed handshake is not counted:\n%s", metrics)
	}

	// Without a certificate the mixed port says so to a TLS client.
	plain := startRotor(t, func(c *config.Config) { c.MixedListen = "127.0.0.1:0" })
	tc := tls.Client(dial(t, plain.mixedAddr.String()), &tls.Config{InsecureSkipVerify: true})
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err == nil {
		t.Error("TLS handshake succeeded on a mixed port without a certificate")
	}
	plain.waitLog("mixed port: TLS handshake on a mixed port without a certificate")
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// testCA is a CA that signs client certificates for tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string
}

func newTestCA(t *testing.T, dir string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// No extended key usage: a CA limited to serverAuth (as rotor cert's
	// is) cannot sign client certificates.
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rotor test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "client-ca.pem")
	writeFile(t, f, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	return &testCA{cert: cert, key: key, file: f}
}

// client is a client certificate for cn signed by ca.
func (ca *testCA) client(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// A client certificate signed by --tls-client-ca gets in as the user its
// common name names, without a password, with that user's pool; an
// unsigned certificate, none, and one naming no user are refused.
func TestTLSClientCertificates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := newTestCA(t, dir)
	ht := httpTarget(t)
	usersFile := filepath.Join(dir, "users")
	// carol may use only 127.0.0.4.
	writeFile(t, usersFile, "carol:{PLAIN}unused-password pool=127.0.0.4\n"+testUser+":{PLAIN}"+testPass+"\n")
	r := startTLSRotor(t, func(c *config.Config) {
		c.TLSClientCA = ca.file
		c.UsersFile = usersFile
		var err error
		if c.Users, err = config.ReadUsers(*c); err != nil {
			t.Fatal(err)
		}
	})
	get := func(cert *tls.Certificate) (string, error) {
		tc := &tls.Config{RootCAs: r.roots}
		if cert != nil {
			tc.Certificates = []tls.Certificate{*cert}
		}
		// Go uses TLSClientConfig for an https proxy's TLS too.
		tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "https", Host: r.https}), TLSClientConfig: tc, DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		resp, err := c.Get("http://" + ht.Addr + "/ip")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		return strings.TrimSpace(string(b)), nil
	}
	carol := ca.client(t, "carol")
	for i := 0; i < 3; i++ {
		got, err := get(&carol)
		if err != nil || got != "127.0.0.4" {
			t.Fatalf("carol's certificate: %q, %v; want her pool, 127.0.0.4", got, err)
		}
	}
	logs := r.waitLog(`"user":"carol"`)
	if !strings.Contains(logs, `"user":"carol"`) {
		t.Errorf("carol not logged as a verified user:\n%s", logs)
	}
	// Signed by another CA (its own): refused in the handshake.
	selfCertPEM, selfKeyPEM, _ := selfSigned([]string{"carol"}, time.Now(), time.Hour)
	unsigned, err := tls.X509KeyPair(selfCertPEM, selfKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := get(&unsigned); err == nil {
		t.Error("a certificate the client CA did not sign got in")
	}
	if _, err := get(nil); err == nil {
		t.Error("a client without a certificate got in")
	}
	mallory := ca.client(t, "mallory")
	if _, err := get(&mallory); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("a signed certificate naming no user: %v, want 403", err)
	}
	if n := strings.Count(r.waitLog("TLS handshake failed"), "TLS handshake failed"); n < 2 {
		t.Errorf("%d handshake failures logged, want the 2 refused certificates", n)
	}
}

// SIGHUP replaces the certificate: new handshakes present the new one,
// a tunnel opened before carries on.
func TestTLSCertificateReload(t *testing.T) {
	t.Parallel()
	echo := tcpTarget(t, target.Echo)
	r := startTLSRotor(t)
	handshake := func() (*tls.Conn, *x509.Certificate) {
		t.Helper()
		c, err := tls.Dial("tcp", r.https, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		return c, c.ConnectionState().PeerCertificates[0]
	}
	// A tunnel through TLS to the echo target.
	tun, before := handshake()
	defer tun.Close()
	fmt.Fprintf(tun, "CONNECT %s HTTP/1.1\r\nProxy-Authorization: Basic %s\r\n\r\n", echo.Addr,
		base64.StdEncoding.EncodeToString([]byte(testUser+":"+testPass)))
	br := bufio.NewReader(tun)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	newCert, newKey, want := tlsFiles(t, t.TempDir(), "next")
	// Replace the files in place, as a certificate renewal does.
	for from, to := range map[string]string{newCert: r.cfg.TLSCert, newKey: r.cfg.TLSKey} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, to, string(b))
	}
	if err := r.reload(); err != nil {
		t.Fatal(err)
	}
	c, after := handshake()
	c.Close()
	if !after.Equal(want) || after.Equal(before) {
		t.Fatal("a handshake after the reload did not present the new certificate")
	}
	// The tunnel opened before still carries bytes both ways.
	_ = tun.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(tun, "still here\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := br.ReadString('\n'); err != nil || line != "still here\n" {
		t.Fatalf("tunnel after the reload: %q, %v", line, err)
	}
	// A broken pair keeps the one in use, named in the error.
	writeFile(t, r.cfg.TLSKey, "not a key\n")
	if err := r.reload(); err == nil || !strings.Contains(err.Error(), r.cfg.TLSKey) {
		t.Fatalf("reload with a broken key: %v, want an error naming the key", err)
	}
	c, still := handshake()
	c.Close()
	if !still.Equal(want) {
		t.Fatal("a broken key replaced the certificate in use")
	}
}

// A client that connects and sends nothing is closed at the handshake
// timeout, on the HTTPS listener (in the TLS handshake) and on the mixed
// port (waiting for the first byte), and each is counted.
func TestTLSHandshakeTimeout(t *testing.T) {
	t.Parallel()
	r := startTLSRotor(t, func(c *config.Config) { c.HandshakeTimeout = 200 * time.Millisecond })
	for _, addr := range []string{r.https, r.mixed} {
		c := dial(t, addr)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("%s: a silent client was not closed: %v", addr, err)
		}
		c.Close()
	}
	for name, hits := range map[string]*serve.Hits{"https": &r.httpsHits, "mixed": &r.instance.mixed.hits} {
		if n := waitCount(func() int64 { return hits.Load(serve.HandshakeTimeout) }, 1); n != 1 {
			t.Errorf("%s: handshake-timeout counted %d times, want 1", name, n)
		}
	}
}

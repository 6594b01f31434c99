package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/rotor-proxy/rotor/internal/target"
)

// openTunnel returns a raw connection through rotor to addr, by CONNECT
// ("connect") or SOCKS5 ("socks5"), with any early reply bytes kept.
func openTunnel(t *testing.T, r *rotor, how, addr string) net.Conn {
	t.Helper()
	switch how {
	case "connect":
		c, err := net.Dial("tcp", r.http)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeConnect(c, testUser, testPass, addr, ""); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT: %s", resp.Status)
		}
		if br.Buffered() > 0 {
			t.Fatalf("%d unexpected bytes after the 200", br.Buffered())
		}
		return c
	case "socks5":
		d, _ := proxy.SOCKS5("tcp", r.sock, &proxy.Auth{User: testUser, Password: testPass}, proxy.Direct)
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	panic(how)
}

// 1 GiB of random bytes each way through an echo target: both hashes
// equal, and the client's half-close comes back as EOF after the last byte.
func TestIntegrity1GiB(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: moves 1 GiB through each protocol")
	}
	const size = 1 << 30
	echo := tcpTarget(t, target.Echo)
	r := startRotor(t)
	for _, how := range []string{"connect", "socks5"} {
		t.Run(how, func(t *testing.T) {
			c := openTunnel(t, r, how, echo.Addr)
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
			sent, recv := sha256.New(), sha256.New()
			wrote := make(chan error, 1)
			go func() {
				src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{1, 2, 3}), size), sent)
				_, err := io.Copy(c, src)
				if err == nil {
					err = c.(*net.TCPConn).CloseWrite()
				}
				wrote <- err
			}()
			n, err := io.Copy(recv, c)
			if err != nil {
				t.Fatalf("read after %d bytes: %v", n, err)
			}
			if err := <-wrote; err != nil {
				t.Fatal(err)
			}
			if n != size {
				t.Fatalf("received %d bytes, want %d", n, size)
			}
			if !bytes.Equal(sent.Sum(nil), recv.Sum(nil)) {
				t.Fatal("SHA-256 of received bytes differs from sent")
			}
		})
	}
}

// The target answers only after it sees EOF: a client that half-closes
// must still get the full reply.
func TestHalfCloseReplyArrives(t *testing.T) {
	t.Parallel()
	tgt := tcpTarget(t, target.CountThenReply)
	r := startRotor(t)
	for _, how := range []string{"connect", "socks5"} {
		t.Run(how, func(t *testing.T) {
			c := openTunnel(t, r, how, tgt.Addr)
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			payload := bytes.Repeat([]byte("rotor"), 200_000)
			if _, err := c.Write(payload); err != nil {
				t.Fatal(err)
			}
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			reply, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := strings.TrimSpace(string(reply)), strconv.Itoa(len(payload)); got != want {
				t.Fatalf("target counted %q bytes, want %s", got, want)
			}
		})
	}
}

// Bytes a client sends right behind its CONNECT head, before the 200,
// must reach the target, as must SOCKS5 optimistic data.
func TestEarlyBytesForwarded(t *testing.T) {
	t.Parallel()
	tgt := tcpTarget(t, target.CountThenReply)
	echo := tcpTarget(t, target.Echo)
	r := startRotor(t)
	t.Run("connect", func(t *testing.T) {
		// A FIN before the 200 counts as the client going away (it cancels
		// the dial), so this client keeps its write half open and reads
		// the early bytes back from an echo target.
		c, err := net.Dial("tcp", r.http)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_ = writeConnect(c, testUser, testPass, echo.Addr, "early-bytes")
		want := "HTTP/1.1 200 Connection established\r\n\r\nearly-bytes"
		got := make([]byte, len(want))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
			t.Fatalf("got %q (%v), want %q", got, err, want)
		}
	})
	t.Run("socks5", func(t *testing.T) {
		c, err := net.Dial("tcp", r.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		msg := append(socksHello(), socksConnect(netip.MustParseAddrPort(tgt.Addr))...)
		msg = append(msg, "early-bytes"...)
		_, _ = c.Write(msg)
		_ = c.(*net.TCPConn).CloseWrite()
		out, _ := io.ReadAll(c)
		// method reply (2) + auth reply (2) + IPv4 success reply (10) + "11\n"
		if len(out) != 17 || out[1] != 2 || out[3] != 0 || out[5] != 0 || string(out[14:]) != "11\n" {
			t.Fatalf("got % x, want success replies then \"11\\n\"", out)
		}
	})
}

func TestAuthFailuresAndSecretsStayOutOfLogs(t *testing.T) {
	t.Parallel()
	ht := httpTarget(t)
	r := startRotor(t)
	ctx := context.Background()

	for name, proxyURL := range map[string]string{
		"none":           "http://" + r.http,
		"wrong password": "http://" + testUser + ":wrong@" + r.http,
		"wrong user":     "http://nobody:" + testPass + "@" + r.http,
	} {
		t.Run("http "+name, func(t *testing.T) {
			c := proxyClient(proxyURL, 1)
			defer c.CloseIdleConnections()
			resp, err := c.Get("http://" + ht.Addr + "/ip")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusProxyAuthRequired {
				t.Fatalf("status %d, want 407", resp.StatusCode)
			}
			if got := resp.Header.Get("Proxy-Authenticate"); got != `Basic realm="rotor"` {
				t.Fatalf("Proxy-Authenticate %q", got)
			}
		})
	}
	t.Run("http CONNECT wrong password", func(t *testing.T) {
		_, err := connectVia(ctx, r.http, testUser, "wrong", ht.Addr)
		if err == nil || !strings.Contains(err.Error(), "407") {
			t.Fatalf("got %v, want 407", err)
		}
	})
	t.Run("socks5 no-auth only", func(t *testing.T) {
		out := socksRaw(t, r.sock, []byte{5, 1, 0})
		if !bytes.Equal(out, []byte{5, 0xff}) {
			t.Fatalf("got % x, want 05 ff", out)
		}
	})
	t.Run("socks5 wrong password", func(t *testing.T) {
		msg := []byte{5, 1, 2, 1, byte(len(testUser))}
		msg = append(msg, testUser...)
		msg = append(msg, 5)
		msg = append(msg, "wrong"...)
		out := socksRaw(t, r.sock, msg)
		if !bytes.Equal(out, []byte{5, 2, 1, 1}) {
			t.Fatalf("got % x, want 05 02 then RFC 1929 failure 01 01", out)
		}
	})
	// A successful request of each kind, so that the log has every line type.
	if _, err := getVia(ctx, proxyClient(r.httpURL(), 1), "http://"+ht.Addr+"/ip"); err != nil {
		t.Fatal(err)
	}
	peer := tcpTarget(t, target.WritePeer)
	if _, err := socksVia(ctx, r.sock, testUser, testPass, peer.Addr); err != nil {
		t.Fatal(err)
	}
	// Every line type: HTTP 200 and 407, SOCKS5 success and auth failure.
	logs := r.waitLog(`"status":200`, `"status":407`, `"reply":0`, `"reason":"auth-failed"`)
	for _, secret := range []string{testPass, base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPass)), "Basic "} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains %q:\n%s", secret, logs)
		}
	}
	if !strings.Contains(logs, `"status":407`) || !strings.Contains(logs, `"reason":"auth-failed"`) {
		t.Errorf("auth failures not logged:\n%s", logs)
	}
}

// socksRaw writes msg, half-closes and returns everything the server sent
// before closing.
func socksRaw(t *testing.T, addr string, msg []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(c)
	return out
}

func TestUpstreamErrors(t *testing.T) {
	t.Parallel()
	// A port with nothing listening: bind one, close it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	ht := httpTarget(t)
	r := startRotor(t)
	ctx := context.Background()

	t.Run("http forward refused is 502", func(t *testing.T) {
		resp, err := proxyClient(r.httpURL(), 1).Get("http://" + closed + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway || strings.Count(string(body), "\n") != 1 {
			t.Fatalf("got %d %q, want 502 with a one-line body", resp.StatusCode, body)
		}
	})
	t.Run("CONNECT refused is 502", func(t *testing.T) {
		_, err := connectVia(ctx, r.http, testUser, testPass, closed)
		if err == nil || !strings.Contains(err.Error(), "502") {
			t.Fatalf("got %v, want 502", err)
		}
	})
	t.Run("socks5 refused is 0x05", func(t *testing.T) {
		out := socksRaw(t, r.sock, append(socksHello(), socksConnect(netip.MustParseAddrPort(closed))...))
		if len(out) < 6 || out[5] != 0x05 {
			t.Fatalf("got % x, want reply code 05", out)
		}
	})
	t.Run("origin-form is 400", func(t *testing.T) {
		c, err := net.Dial("tcp", r.http)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		auth := base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPass))
		fmt.Fprintf(c, "GET /ip HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", ht.Addr, auth)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status %d, want 400", resp.StatusCode)
		}
		if n := ht.Conns.Load(); n != 0 {
			t.Fatalf("origin-form request reached the target (%d connections)", n)
		}
	})
	// A browser opening the proxy's address as a page sends no
	// credentials: it gets the explanation, not a password prompt.
	t.Run("origin-form without credentials is 400, not 407", func(t *testing.T) {
		resp, err := http.Get("http://" + r.http + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Proxy-Authenticate") != "" || !strings.Contains(string(body), "this is a proxy, not a web server") {
			t.Fatalf("%s %v: %q, want the explanatory 400", resp.Status, resp.Header, body)
		}
	})
}

package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rotor-proxy/rotor/internal/target"
)

// USER-session-KEY pins every request and connection of the session to
// one address, over HTTP forward, CONNECT and SOCKS5 alike; different
// keys spread over the pool.
func TestStickySessions(t *testing.T) {
	t.Parallel()
	ht := httpTarget(t)
	peer := tcpTarget(t, target.WritePeer)
	r := startRotor(t)
	ctx := context.Background()
	spread := map[string]bool{}
	for k := 0; k < 16; k++ {
		user := fmt.Sprintf("%s-session-key%d", testUser, k)
		c := proxyClient("http://"+user+":"+testPass+"@"+r.http, 2)
		seen := map[string]bool{}
		for i := 0; i < 4; i++ {
			for _, do := range r.paths(ctx, c, user, testPass, "http://"+ht.Addr+"/ip", peer.Addr) {
				got, err := do()
				if err != nil {
					t.Fatalf("session key%d: %v", k, err)
				}
				seen[got] = true
				spread[got] = true
			}
		}
		c.CloseIdleConnections()
		if len(seen) != 1 {
			t.Fatalf("session key%d left from %d addresses, want 1: %v", k, len(seen), seen)
		}
	}
	if len(spread) < 3 {
		t.Fatalf("16 sessions used %d addresses of 4", len(spread))
	}
}

// X-Rotor-Session does the same for clients that cannot change their user
// name, and never reaches the origin.
func TestStickyHeader(t *testing.T) {
	t.Parallel()
	var leaked atomic.Bool
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Rotor-Session") != "" {
			leaked.Store(true)
		}
		_, _ = w.Write([]byte(target.PeerIP(r.RemoteAddr)))
	}))
	defer origin.Close()
	r := startRotor(t)
	u, _ := url.Parse(r.httpURL())
	tr := &http.Transport{Proxy: http.ProxyURL(u)}
	defer tr.CloseIdleConnections()
	seen := map[string]bool{}
	for i := 0; i < 8; i++ {
		req, _ := http.NewRequest(http.MethodGet, origin.URL, nil)
		req.Header.Set("X-Rotor-Session", "cart7")
		req.Close = true
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 64)
		n, _ := resp.Body.Read(b)
		resp.Body.Close()
		seen[string(b[:n])] = true
	}
	if len(seen) != 1 || leaked.Load() {
		t.Fatalf("header session used %v (want one address), leaked to origin: %v", seen, leaked.Load())
	}

	// On CONNECT too: 8 tunnels with the header leave from one address,
	// 8 without it from all four.
	peer := tcpTarget(t, target.WritePeer)
	for _, extra := range []string{"X-Rotor-Session: cart7\r\n", ""} {
		seen := map[string]bool{}
		for i := 0; i < 8; i++ {
			c, err := net.Dial("tcp", r.http)
			if err != nil {
				t.Fatal(err)
			}
			auth := base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPass))
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n%s\r\n", peer.Addr, peer.Addr, auth, extra)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %v %v", resp, err)
			}
			line, _ := br.ReadString('\n')
			seen[strings.TrimSpace(line)] = true
			c.Close()
		}
		if want := map[bool]int{true: 1, false: 4}[extra != ""]; len(seen) != want {
			t.Errorf("CONNECT with %q used %v, want %d addresses", extra, seen, want)
		}
	}
}

// Malformed or unknown parameters are an auth failure, logged with the
// parameter; the password check is unchanged.
func TestStickyBadParameters(t *testing.T) {
	t.Parallel()
	ht := httpTarget(t)
	peer := tcpTarget(t, target.WritePeer)
	r := startRotor(t)
	ctx := context.Background()
	for _, user := range []string{testUser + "-session-k1-country-us", testUser + "-session-", testUser + "-session-k1-ttl-soon"} {
		c := proxyClient("http://"+url.PathEscape(user)+":"+testPass+"@"+r.http, 1)
		if _, err := getVia(ctx, c, "http://"+ht.Addr+"/ip"); err == nil || !strings.Contains(err.Error(), "407") {
			t.Errorf("HTTP user %q: %v, want 407", user, err)
		}
		c.CloseIdleConnections()
		if _, err := socksVia(ctx, r.sock, user, testPass, peer.Addr); err == nil {
			t.Errorf("SOCKS5 user %q accepted", user)
		}
	}
	if _, err := socksVia(ctx, r.sock, testUser+"-session-k1", "wrong", peer.Addr); err == nil {
		t.Error("session user with a wrong password accepted")
	}
	if logs := r.waitLog(`unknown parameter \"country\"`); !strings.Contains(logs, `unknown parameter \"country\"`) {
		t.Error("refused parameter not named in the log")
	}
}

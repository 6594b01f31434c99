package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/net/proxy"

	"github.com/rotor-proxy/rotor/auth"
	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/pool"
)

// demo runs rotor on a loopback pool (127.0.0.2-127.0.0.5; all of 127/8
// is local on Linux) against an in-process target that reports the peer
// address, and prints which source address each request left from.
func demo(ctx context.Context, out io.Writer) error {
	httpTarget, err := target.HTTP("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer httpTarget.Close()
	tcpTarget, err := target.TCP("127.0.0.1:0", target.WritePeer)
	if err != nil {
		return err
	}
	defer tcpTarget.Close()

	const user, pass = "demo", "demo-secret"
	cfg := config.Config{
		Pool: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32"), netip.MustParsePrefix("127.0.0.3/32"),
			netip.MustParsePrefix("127.0.0.4/32"), netip.MustParsePrefix("127.0.0.5/32")},
		Strategy: pool.RoundRobin, HTTPListen: "127.0.0.1:0", SOCKSListen: "127.0.0.1:0", MixedListen: "127.0.0.1:0",
		Users: []auth.UserSpec{auth.PlainUser(user, pass)},
		// The demo's targets are on loopback, which rotor refuses by default.
		AllowDest:   []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		DialTimeout: 5 * time.Second, HandshakeTimeout: 5 * time.Second, HeaderTimeout: 5 * time.Second,
	}
	in, err := start(cfg, zerolog.Nop(), target.OfflineResolver())
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = in.shutdown(sctx)
	}()

	fmt.Fprintf(out, "rotor demo: pool %s, strategy %s, user %q\n", strings.Join(labels(in.dialer.Pool()), ", "), cfg.Strategy, user)
	fmt.Fprintf(out, "  HTTP proxy   %s\n  SOCKS5 proxy %s\n  mixed port   %s (HTTP and SOCKS5 on one port)\n  target       %s (HTTP) and %s (raw TCP), both report the peer address\n\n",
		in.httpAddr, in.socksAddr, in.mixedAddr, httpTarget.Addr, tcpTarget.Addr)
	fmt.Fprintf(out, "%-38s %s\n", "request", "target saw")

	httpClient := proxyClient("http://"+user+":"+pass+"@"+in.httpAddr.String(), 1)
	defer httpClient.CloseIdleConnections()
	seen := map[string]int{}
	steps := []struct {
		name string
		do   func() (string, error)
	}{
		{"HTTP  GET http://" + httpTarget.Addr + "/ip", func() (string, error) { return getVia(ctx, httpClient, "http://"+httpTarget.Addr+"/ip") }},
		{"HTTP  GET (same client connection)", func() (string, error) { return getVia(ctx, httpClient, "http://"+httpTarget.Addr+"/ip") }},
		{"HTTP  CONNECT " + tcpTarget.Addr, func() (string, error) { return connectVia(ctx, in.httpAddr.String(), user, pass, tcpTarget.Addr) }},
		{"SOCKS5 CONNECT " + tcpTarget.Addr, func() (string, error) { return socksVia(ctx, in.socksAddr.String(), user, pass, tcpTarget.Addr) }},
		{"SOCKS5 CONNECT localhost:" + port(tcpTarget.Addr), func() (string, error) {
			return socksVia(ctx, in.socksAddr.String(), user, pass, "localhost:"+port(tcpTarget.Addr))
		}},
		{"mixed port, HTTP CONNECT", func() (string, error) { return connectVia(ctx, in.mixedAddr.String(), user, pass, tcpTarget.Addr) }},
		{"mixed port, SOCKS5 CONNECT", func() (string, error) { return socksVia(ctx, in.mixedAddr.String(), user, pass, tcpTarget.Addr) }},
	}
	for round := 0; round < 4; round++ { // 7 steps, 4 addresses: each step meets every address
		for _, s := range steps {
			got, err := s.do()
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			seen[got]++
			fmt.Fprintf(out, "%-38s %s\n", s.name, got)
		}
	}
	fmt.Fprintln(out)
	for _, a := range labels(in.dialer.Pool()) {
		fmt.Fprintf(out, "%-10s used %d times\n", a, seen[a])
		if seen[a] != len(steps) {
			return errors.New("addresses were not used in turn: rotation is broken")
		}
	}
	fmt.Fprintln(out, "\nEvery request left from the next address of one pool shared by every listener.")
	return nil
}

// proxyClient returns an HTTP client that uses the proxy URL (http:// or
// socks5://), with at most conns connections to the proxy.
func proxyClient(proxyURL string, conns int) *http.Client {
	u, _ := url.Parse(proxyURL)
	return &http.Client{
		Transport: &http.Transport{Proxy: http.ProxyURL(u), MaxConnsPerHost: conns, MaxIdleConnsPerHost: conns},
		Timeout:   10 * time.Second,
	}
}

// getVia fetches url and returns the trimmed body.
func getVia(ctx context.Context, c *http.Client, u string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return strings.TrimSpace(string(b)), nil
}

// connectVia opens a CONNECT tunnel to a target.WritePeer server and
// returns the line it wrote.
func connectVia(ctx context.Context, proxyAddr, user, pass, targetAddr string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := writeConnect(c, user, pass, targetAddr, ""); err != nil {
		return "", err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("CONNECT: %s", resp.Status)
	}
	line, err := br.ReadString('\n')
	return strings.TrimSpace(line), err
}

// writeConnect sends an authenticated CONNECT head for addr, then extra.
func writeConnect(c net.Conn, user, pass, addr, extra string) error {
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	_, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n%s", addr, addr, auth, extra)
	return err
}

// socksVia opens a SOCKS5 connection to a target.WritePeer server and
// returns the line it wrote. A host name target is resolved by rotor.
func socksVia(ctx context.Context, proxyAddr, user, pass, targetAddr string) (string, error) {
	d, err := proxy.SOCKS5("tcp", proxyAddr, &proxy.Auth{User: user, Password: pass}, proxy.Direct)
	if err != nil {
		return "", err
	}
	c, err := d.(proxy.ContextDialer).DialContext(ctx, "tcp", targetAddr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func port(hostport string) string {
	_, p, _ := net.SplitHostPort(hostport)
	return p
}

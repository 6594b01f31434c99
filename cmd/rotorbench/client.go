package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// The load generator shares two cores with the proxy it measures, so its
// clients are minimal: requests are pre-built byte slices and responses
// are parsed just enough to find the body (Content-Length only; every
// target here sends it).

var errStatus = errors.New("unexpected status")

// proxySpec says how to reach a target: directly, through an HTTP proxy,
// or through a SOCKS5 proxy.
type proxySpec struct {
	HTTP  string // HTTP proxy host:port
	SOCKS string // SOCKS5 proxy host:port
	TLS   bool   // the HTTP proxy is reached inside TLS
	User  string
	Pass  string
}

// dialHTTP connects to the HTTP proxy, inside TLS when p.TLS: a full
// handshake per connection (no session resumption), the same for every
// proxy, which all serve one certificate; it is not verified. The key
// exchange is X25519 for every proxy: Go would offer the post-quantum
// X25519MLKEM768 first, which a Go server takes and OpenSSL 3.0 (squid)
// cannot, and the rows would compare different handshakes.
func (p proxySpec) dialHTTP(timeout time.Duration) (*conn, error) {
	c, err := dial(p.HTTP, timeout)
	if err != nil || !p.TLS {
		return c, err
	}
	tc := tls.Client(c.Conn, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}, CurvePreferences: []tls.CurveID{tls.X25519}})
	_ = tc.SetDeadline(time.Now().Add(timeout))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	_ = tc.SetDeadline(time.Time{})
	c.Conn = tc
	c.br.Reset(tc)
	return c, nil
}

func (p proxySpec) basic() string {
	return base64.StdEncoding.EncodeToString([]byte(p.User + ":" + p.Pass))
}

// conn is one client connection with a reusable read buffer.
type conn struct {
	net.Conn
	br *bufio.Reader
}

func dial(addr string, timeout time.Duration) (*conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	// Requests are written whole; Nagle would only add latency.
	_ = c.(*net.TCPConn).SetNoDelay(true)
	return &conn{Conn: c, br: bufio.NewReaderSize(c, 16<<10)}, nil
}

// readHead reads a response head and returns the status code and the
// Content-Length (-1 when absent). keepAlive is false when the server
// said Connection: close.
func (c *conn) readHead() (status int, length int64, keepAlive bool, err error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return 0, 0, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, 0, false, fmt.Errorf("bad status line %q", line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, 0, false, fmt.Errorf("bad status line %q", line)
	}
	length, keepAlive = -1, line[7] == '1'
	for {
		line, err = c.br.ReadSlice('\n')
		if err != nil {
			return 0, 0, false, err
		}
		if len(line) <= 2 {
			return status, length, keepAlive, nil
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case asciiEqualFold(k, "content-length"):
			length, err = strconv.ParseInt(string(v), 10, 64)
			if err != nil {
				return 0, 0, false, fmt.Errorf("bad Content-Length %q", v)
			}
		case asciiEqualFold(k, "connection") || asciiEqualFold(k, "proxy-connection"):
			if asciiEqualFold(v, "close") {
				keepAlive = false
			}
		}
	}
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		x, y := b[i]|0x20, s[i]|0x20
		if x != y {
			return false
		}
	}
	return true
}

// get sends req and reads a 200 response. With body nil the body is
// discarded and only counted; otherwise it is read into body[:0].
func (c *conn) get(req []byte, body []byte) (out []byte, n int64, keepAlive bool, err error) {
	if _, err := c.Write(req); err != nil {
		return nil, 0, false, err
	}
	status, length, keepAlive, err := c.readHead()
	if err != nil {
		return nil, 0, false, err
	}
	if status != 200 {
		return nil, 0, false, fmt.Errorf("%w %d", errStatus, status)
	}
	if length < 0 {
		return nil, 0, false, errors.New("response without Content-Length")
	}
	if body == nil {
		n, err = io.CopyN(io.Discard, c.br, length)
		return nil, n, keepAlive, err
	}
	if int64(cap(body)) < length {
		body = make([]byte, length)
	}
	body = body[:length]
	_, err = io.ReadFull(c.br, body)
	return body, length, keepAlive, err
}

// connectTunnel asks an HTTP proxy for a tunnel to target.
func (c *conn) connectTunnel(target string, p proxySpec) error {
	req := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n"
	if p.User != "" {
		req += "Proxy-Authorization: Basic " + p.basic() + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		return err
	}
	status, _, _, err := c.readHead()
	if err != nil {
		return err
	}
	if status != 200 {
		return fmt.Errorf("CONNECT: %w %d", errStatus, status)
	}
	return nil
}

// socksTunnel runs a SOCKS5 handshake (RFC 1929 auth when p.User is set)
// for target, an IP:port or name:port.
func (c *conn) socksTunnel(target string, p proxySpec) error {
	if err := c.socksAuth(p); err != nil {
		return err
	}
	host, portStr, err := net.SplitHostPort(target)
	if err != nil {
		return err
	}
	port, _ := strconv.ParseUint(portStr, 10, 16)
	req := []byte{5, 1, 0}
	if a, err := netip.ParseAddr(host); err == nil && a.Is4() {
		ip := a.As4()
		req = append(append(req, 1), ip[:]...)
	} else if err == nil {
		ip := a.As16()
		req = append(append(req, 4), ip[:]...)
	} else {
		req = append(append(req, 3, byte(len(host))), host...)
	}
	req = binary.BigEndian.AppendUint16(req, uint16(port))
	if _, err := c.Write(req); err != nil {
		return err
	}
	var r [4]byte
	if _, err := io.ReadFull(c.br, r[:4]); err != nil {
		return err
	}
	if r[1] != 0 {
		return fmt.Errorf("SOCKS5 reply %#02x", r[1])
	}
	skip := map[byte]int{1: 4 + 2, 4: 16 + 2}[r[3]]
	if r[3] == 3 {
		b, err := c.br.ReadByte()
		if err != nil {
			return err
		}
		skip = int(b) + 2
	}
	_, err = c.br.Discard(skip)
	return err
}

// socksAuth runs the greeting and, when p.User is set, RFC 1929 auth.
func (c *conn) socksAuth(p proxySpec) error {
	method := byte(0)
	if p.User != "" {
		method = 2
	}
	if _, err := c.Write([]byte{5, 1, method}); err != nil {
		return err
	}
	var r [4]byte
	if _, err := io.ReadFull(c.br, r[:2]); err != nil {
		return err
	}
	if r[0] != 5 || r[1] != method {
		return fmt.Errorf("SOCKS5 method reply % x", r[:2])
	}
	if method == 2 {
		msg := append([]byte{1, byte(len(p.User))}, p.User...)
		msg = append(append(msg, byte(len(p.Pass))), p.Pass...)
		if _, err := c.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(c.br, r[:2]); err != nil {
			return err
		}
		if r[1] != 0 {
			return errors.New("SOCKS5 auth failed")
		}
	}
	return nil
}

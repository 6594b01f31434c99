package main

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
	"github.com/rotor-proxy/rotor/serve"
)

// 1,000 clients that send one byte every 500 ms (half HTTP, half SOCKS5)
// are closed at their head and handshake timeouts, and a good client's
// p99 latency meanwhile stays under a second.
func TestSlowloris(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: holds slow clients for seconds")
	}
	peer := tcpTarget(t, target.WritePeer)
	ht := httpTarget(t)
	r := startRotor(t, func(c *config.Config) {
		c.HeaderTimeout, c.HandshakeTimeout = 2*time.Second, 2*time.Second
	})
	const slow = 1000
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < slow; i++ {
		addr := r.http
		if i%2 == 1 {
			addr = r.sock
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("slow client %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	httpHead := []byte("GET http://" + ht.Addr + "/ip HTTP/1.1\r\nHost: x\r\n")
	socksHead := socksHello()
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		for step := 0; ; step++ {
			for i, c := range conns {
				head := httpHead
				if i%2 == 1 {
					head = socksHead
				}
				_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
				_, _ = c.Write(head[step%len(head) : step%len(head)+1])
			}
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()

	ctx := context.Background()
	client := proxyClient(r.httpURL(), 1)
	defer client.CloseIdleConnections()
	var lat []time.Duration
	for i := 0; i < 100; i++ {
		start := time.Now()
		var err error
		if i%2 == 0 {
			_, err = getVia(ctx, client, "http://"+ht.Addr+"/ip")
		} else {
			_, err = socksVia(ctx, r.sock, testUser, testPass, peer.Addr)
		}
		if err != nil {
			t.Fatalf("good request %d during the slowloris: %v", i, err)
		}
		lat = append(lat, time.Since(start))
		time.Sleep(20 * time.Millisecond)
	}
	slices.Sort(lat)
	if p99 := lat[98]; p99 > time.Second {
		t.Fatalf("good client p99 %s during the slowloris, want under 1s", p99)
	}

	// Each slow client is counted, by name, as rotor closes it at its 2 s
	// timeout: wait for all of them, then check that none is open.
	h := waitCount(func() int64 { return r.hits().Load(serve.HeaderTimeout) }, slow/2)
	if h, s := h, waitCount(func() int64 { return r.hits().Load(serve.HandshakeTimeout) }, slow/2); h != slow/2 || s != slow/2 {
		t.Fatalf("counted %d header-timeout and %d handshake-timeout, want %d each", h, s, slow/2)
	}
	close(stop)
	<-trickled
	open := 0
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					open++
				}
				break
			}
		}
	}
	if open > 0 {
		t.Fatalf("%d of %d slow clients still open past their 2s timeout", open, slow)
	}
	// Each was logged with its timeout's name.
	for _, name := range []string{`"timeout":"header-timeout"`, `"timeout":"handshake-timeout"`} {
		if !strings.Contains(r.waitLog(name), name) {
			t.Errorf("no log line with %s", name)
		}
	}
}

package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"testing"

	"github.com/rotor-proxy/rotor/internal/target"
)

// 100 requests each way, every address exactly 25 times.
func TestRotationEachProtocol(t *testing.T) {
	t.Parallel()
	ht := httpTarget(t)
	tt := tcpTarget(t, target.WritePeer)
	ctx := context.Background()
	r := startRotor(t)
	client := proxyClient(r.httpURL(), 4)
	defer client.CloseIdleConnections()

	ways := map[string]func() (string, error){
		"http-forward": func() (string, error) { return getVia(ctx, client, "http://"+ht.Addr+"/ip") },
		"connect":      func() (string, error) { return connectVia(ctx, r.http, testUser, testPass, tt.Addr) },
		"socks5-ip":    func() (string, error) { return socksVia(ctx, r.sock, testUser, testPass, tt.Addr) },
		"socks5-name":  func() (string, error) { return socksVia(ctx, r.sock, testUser, testPass, "localhost:"+port(tt.Addr)) },
	}
	for name, do := range ways {
		t.Run(name, func(t *testing.T) {
			seen := map[string]int{}
			for i := 0; i < 100; i++ {
				got, err := do()
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				seen[got]++
			}
			wantEach(t, seen, 25)
		})
	}
}

// HTTP and SOCKS5 share one pool: interleaved, the order is still strict.
func TestRotationInterleavedIsOnePool(t *testing.T) {
	t.Parallel()
	ht := httpTarget(t)
	tt := tcpTarget(t, target.WritePeer)
	ctx := context.Background()
	r := startRotor(t)
	client := proxyClient(r.httpURL(), 1)
	defer client.CloseIdleConnections()
	var prev net.IP
	seen := map[string]int{}
	for i := 0; i < 100; i++ {
		var got string
		var err error
		switch i % 3 {
		case 0:
			got, err = getVia(ctx, client, "http://"+ht.Addr+"/ip")
		case 1:
			got, err = socksVia(ctx, r.sock, testUser, testPass, tt.Addr)
		case 2:
			got, err = connectVia(ctx, r.http, testUser, testPass, tt.Addr)
		}
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		ip := net.ParseIP(got).To4()
		if prev != nil && ip[3] != 2+(prev[3]-2+1)%4 {
			t.Fatalf("request %d left from %s right after %s: not one round-robin order", i, ip, prev)
		}
		prev = ip
		seen[got]++
	}
	wantEach(t, seen, 25)
}

// 64 concurrent clients over all ways; under -race too the counts are exact.
func TestRotationConcurrentClients(t *testing.T) {
	t.Parallel()
	ht := httpTarget(t)
	tt := tcpTarget(t, target.WritePeer)
	ctx := context.Background()
	r := startRotor(t)
	httpClient := proxyClient(r.httpURL(), 64)
	socksClient := proxyClient(r.socksURL(), 64)
	// net/http opens one SOCKS5 connection per upstream connection; with
	// keep-alives off every request is exactly one connection, one pick.
	socksClient.Transport.(*http.Transport).DisableKeepAlives = true
	defer httpClient.CloseIdleConnections()
	defer socksClient.CloseIdleConnections()

	const clients, each = 64, 8
	var mu sync.Mutex
	seen := map[string]int{}
	errs := make(chan error, clients*each)
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				var got string
				var err error
				switch (c + i) % 4 {
				case 0:
					got, err = getVia(ctx, httpClient, "http://"+ht.Addr+"/ip")
				case 1:
					got, err = connectVia(ctx, r.http, testUser, testPass, tt.Addr)
				case 2:
					got, err = socksVia(ctx, r.sock, testUser, testPass, "localhost:"+port(tt.Addr))
				case 3:
					got, err = getVia(ctx, socksClient, "http://"+ht.Addr+"/ip")
				}
				if err != nil {
					errs <- fmt.Errorf("client %d request %d: %w", c, i, err)
					continue
				}
				mu.Lock()
				seen[got]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	wantEach(t, seen, clients*each/len(poolAddrs))
}

// One client connection, 12 requests: all four addresses in turn, and the
// target sees no more upstream connections than the pool has addresses.
func TestKeepAliveRotation(t *testing.T) {
	t.Parallel()
	ht := httpTarget(t)
	r := startRotor(t)
	client := proxyClient(r.httpURL(), 1)
	defer client.CloseIdleConnections()
	var newConns int
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) {
			if !i.Reused {
				newConns++
			}
		},
	})
	seen := map[string]int{}
	for i := 0; i < 12; i++ {
		got, err := getVia(ctx, client, "http://"+ht.Addr+"/ip")
		if err != nil {
			t.Fatal(err)
		}
		seen[got]++
	}
	wantEach(t, seen, 3)
	if newConns != 1 {
		t.Errorf("client opened %d connections to the proxy, want 1", newConns)
	}
	if n := ht.Conns.Load(); n > int64(len(poolAddrs)) {
		t.Errorf("target accepted %d upstream connections, want at most %d (one per source)", n, len(poolAddrs))
	}
}

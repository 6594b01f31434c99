package httpproxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/rotor-proxy/rotor/internal/testkit"
	"github.com/rotor-proxy/rotor/metrics"
	"github.com/rotor-proxy/rotor/pool"
)

// One keep-alive request through the proxy to an in-process origin: the
// whole per-request path (parse, auth, pick, pooled upstream, response),
// with allocations. -bench Forward/log compares the same with a JSON
// access-log line per request, Forward/metrics with Prometheus metrics on
// (and no log):
//
//	go test -run '^$' -bench . -benchmem ./httpproxy/
func BenchmarkForward(b *testing.B) {
	for _, variant := range []string{"nolog", "log", "metrics"} {
		log := zerolog.Nop()
		if variant == "log" {
			log = zerolog.New(io.Discard)
		}
		b.Run(variant, func(b *testing.B) {
			origin := benchOrigin(b)
			p, err := testkit.Pool([]netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")}, pool.RoundRobin)
			if err != nil {
				b.Fatal(err)
			}
			var m *metrics.Metrics
			dopts := pool.DialerOptions{Timeout: 5 * time.Second}
			if variant == "metrics" {
				m = metrics.New(func() *pool.Pool { return p }, "bench")
				dopts.OnDial = m.Dialed
			}
			s := New(Options{Dialer: pool.NewDialer(p, dopts),
				Access: testkit.Access(testkit.OneUser(user, pass)), Log: log, Metrics: m})
			ln, _ := net.Listen("tcp", "127.0.0.1:0")
			go func() { _ = s.Serve(ln) }()
			defer closeNow(s)
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			req := []byte(fmt.Sprintf("GET http://%s/ip HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n",
				origin, origin, base64.StdEncoding.EncodeToString([]byte(user+":"+pass))))
			br := bufio.NewReader(c)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}

// benchOrigin answers every request with a short body, keep-alive.
func benchOrigin(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "127.0.0.2\n")
	})}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// Parsing one request head, with allocations.
func BenchmarkReadRequest(b *testing.B) {
	head := "GET http://example.com/path?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench\r\n" +
		"Accept: */*\r\nProxy-Authorization: Basic dTpw\r\n\r\n"
	r := strings.NewReader(head)
	br := bufio.NewReader(r)
	var buf headBuf
	lim := bodyLimits{trailer: headLimits{64 << 10, maxHeaderFields}}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		r.Reset(head)
		br.Reset(r)
		if _, err := readRequest(br, 64<<10, &buf, lim); err != nil {
			b.Fatal(err)
		}
	}
}

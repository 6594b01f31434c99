package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/internal/target"
)

// scrape fetches /metrics over HTTP and parses it.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// matching is the samples of family name whose labels include all of
// want (name, value pairs).
func matching(fams map[string]*dto.MetricFamily, name string, want ...string) []*dto.Metric {
	f := fams[name]
	if f == nil {
		return nil
	}
	var out []*dto.Metric
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(want); i += 2 {
			if have[want[i]] != want[i+1] {
				continue next
			}
		}
		out = append(out, m)
	}
	return out
}

// value is the first matching sample's value: a counter, gauge or
// histogram's count. ok is false when none matches.
func value(fams map[string]*dto.MetricFamily, name string, want ...string) (float64, bool) {
	for _, m := range matching(fams, name, want...) {
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// sum adds the counter or gauge values of every matching sample.
func sum(fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	var total float64
	for _, m := range matching(fams, name, want...) {
		total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return total
}

// waitMetric scrapes until name{want} equals v, for up to 5 s (counts are
// made as requests end, just after the client has its answer).
func waitMetric(t *testing.T, addr string, v float64, name string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := value(scrape(t, addr), name, want...)
		if got == v {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want %v", name, want, got, v)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func getStatus(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Every request, tunnel and SOCKS5 connection is counted against the
// source it left from, with its protocol and result; tunnel bytes are
// exact; listeners count auth failures; label values never carry a user
// or a target.
func TestMetrics(t *testing.T) {
	ht := httpTarget(t)
	echo := tcpTarget(t, target.Echo)
	r := startRotor(t, func(c *config.Config) { c.MetricsListen = "127.0.0.1:0" })
	maddr := r.metricsLn.Addr().String()
	ctx := context.Background()

	// 8 forwarded GETs with bodies of known size: 2 per address.
	client := proxyClient(r.httpURL(), 1)
	defer client.CloseIdleConnections()
	var httpBody int
	for i := 0; i < 8; i++ {
		resp, err := client.Get(fmt.Sprintf("http://%s/bytes/%d", ht.Addr, 1000+i))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		httpBody += len(b)
	}
	// 4 CONNECT and 4 SOCKS5 tunnels, 3000 bytes each way through each.
	payload := bytes.Repeat([]byte("m"), 3000)
	for _, how := range []string{"connect", "socks5"} {
		for i := 0; i < 4; i++ {
			c := openTunnel(t, r, how, echo.Addr)
			if _, err := c.Write(payload); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, len(payload))); err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
	}
	// One refused CONNECT (from 127.0.0.2, the next in order), one wrong
	// password each way.
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := closed.Addr().String()
	closed.Close()
	if _, err := connectVia(ctx, r.http, testUser, testPass, refused); err == nil {
		t.Fatal("CONNECT to a closed port succeeded")
	}
	if _, err := connectVia(ctx, r.http, testUser, "wrong", echo.Addr); err == nil {
		t.Fatal("wrong password accepted over HTTP")
	}
	if _, err := socksVia(ctx, r.sock, testUser, "wrong", echo.Addr); err == nil {
		t.Fatal("wrong password accepted over SOCKS5")
	}

	waitMetric(t, maddr, 0, "rotor_source_active_tunnels", "source", "127.0.0.2")
	waitMetric(t, maddr, 1, "rotor_listener_auth_failures_total", "listener", "socks5")
	var fams map[string]*dto.MetricFamily
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		fams = scrape(t, maddr)
		if sum(fams, "rotor_source_bytes_total", "direction", "sent") == 8*3000 || time.Now().After(deadline) {
			break
		}
	}
	for _, a := range poolAddrs {
		for proto, want := range map[string]float64{"http": 2, "connect": 1, "socks5": 1} {
			if got, ok := value(fams, "rotor_source_requests_total", "source", a, "protocol", proto, "result", "ok"); !ok || got != want {
				t.Errorf("requests{source=%s,protocol=%s,result=ok} = %v, want %v", a, proto, got, want)
			}
		}
		if got, _ := value(fams, "rotor_source_up", "source", a); got != 1 {
			t.Errorf("%s up = %v", a, got)
		}
		// Each tunnel moved 3000 bytes each way; HTTP sent no body.
		if got, _ := value(fams, "rotor_source_bytes_total", "source", a, "direction", "sent"); got != 2*3000 {
			t.Errorf("%s sent %v bytes, want 6000", a, got)
		}
		dials, _ := value(fams, "rotor_source_dials_total", "source", a, "result", "ok")
		hist, _ := value(fams, "rotor_source_dial_duration_seconds", "source", a)
		if dials < 2 || hist != dials {
			t.Errorf("%s: %v dials ok, %v in the latency histogram; want >= 2 and equal", a, dials, hist)
		}
	}
	if got, _ := value(fams, "rotor_source_requests_total", "source", "127.0.0.2", "protocol", "connect", "result", "refused"); got != 1 {
		t.Errorf("refused CONNECT from 127.0.0.2 counted %v times, want 1", got)
	}
	if got := sum(fams, "rotor_source_requests_total", "result", "refused"); got != 1 {
		t.Errorf("%v refused requests in all, want 1", got)
	}
	if got := sum(fams, "rotor_source_bytes_total", "direction", "received"); got != float64(8*3000+httpBody) {
		t.Errorf("received %v bytes in all, want %d (tunnels) + %d (HTTP bodies)", got, 8*3000, httpBody)
	}
	if got, _ := value(fams, "rotor_listener_auth_failures_total", "listener", "http"); got != 1 {
		t.Errorf("HTTP auth failures = %v, want 1", got)
	}
	// Bounded labels: nothing a client chose (user, target) is a label.
	allowed := map[string]bool{"source": true, "protocol": true, "result": true, "direction": true, "listener": true,
		"timeout": true, "limit": true, "version": true, "reason": true}
	for name, f := range fams {
		if !strings.HasPrefix(name, "rotor_") {
			continue
		}
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if !allowed[l.GetName()] || strings.Contains(l.GetValue(), testUser) || strings.Contains(l.GetValue(), ":") {
					t.Errorf("%s has label %s=%q", name, l.GetName(), l.GetValue())
				}
			}
		}
	}

	// A live tunnel shows as active on its source and its listener.
	c := openTunnel(t, r, "socks5", echo.Addr)
	waitMetric(t, maddr, 1, "rotor_listener_active_connections", "listener", "socks5")
	if got := sum(scrape(t, maddr), "rotor_source_active_tunnels"); got != 1 {
		t.Errorf("active tunnels over all sources = %v, want 1", got)
	}
	c.Close()
	waitMetric(t, maddr, 0, "rotor_listener_active_connections", "listener", "socks5")

	if code, body := getStatus(t, "http://"+maddr+"/healthz"); code != 200 {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := getStatus(t, "http://"+maddr+"/readyz"); code != 200 {
		t.Errorf("/readyz: %d %s", code, body)
	}
	r.stopAccepting()
	if code, body := getStatus(t, "http://"+maddr+"/readyz"); code != 503 || !strings.Contains(body, "shutting down") {
		t.Errorf("/readyz while draining: %d %s, want 503", code, body)
	}
}

// flakyProbeTarget answers 503 to health probes from the addresses in bad.
type flakyProbeTarget struct {
	mu  sync.Mutex
	bad map[string]bool
}

func (f *flakyProbeTarget) set(ip string, bad bool) {
	f.mu.Lock()
	f.bad[ip] = bad
	f.mu.Unlock()
}

// An address whose health probes fail leaves rotation after --health-fall
// rounds, shows as down in /metrics and the log, and comes back after
// --health-rise passes; the others carry every request meanwhile. With
// every address down, /readyz says so and requests still go out.
func TestActiveHealth(t *testing.T) {
	f := &flakyProbeTarget{bad: map[string]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		f.mu.Lock()
		bad := f.bad[target.PeerIP(req.RemoteAddr)]
		f.mu.Unlock()
		if bad {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()

	peer := tcpTarget(t, target.WritePeer)
	r := startRotor(t, func(c *config.Config) {
		c.MetricsListen = "127.0.0.1:0"
		c.HealthTarget = "http://" + ln.Addr().String() + "/health"
		c.HealthInterval, c.HealthFall, c.HealthRise = 100*time.Millisecond, 2, 2
		c.HealthTimeout = 10 * time.Second // a passing probe must not time out on a loaded machine
	})
	maddr := r.metricsLn.Addr().String()
	ctx := context.Background()

	f.set("127.0.0.3", true)
	waitMetric(t, maddr, 0, "rotor_source_up", "source", "127.0.0.3")
	r.waitLog(`"src":"127.0.0.3"`, "out of rotation")
	for i := 0; i < 9; i++ {
		got, err := socksVia(ctx, r.sock, testUser, testPass, peer.Addr)
		if err != nil {
			t.Fatal(err)
		}
		if got == "127.0.0.3" {
			t.Fatalf("request %d left from the unhealthy 127.0.0.3", i)
		}
	}
	fams := scrape(t, maddr)
	if got, _ := value(fams, "rotor_source_health_probes_total", "source", "127.0.0.3", "result", "fail"); got < 2 {
		t.Errorf("127.0.0.3 failed probes = %v, want >= 2", got)
	}
	if got, _ := value(fams, "rotor_source_last_change_timestamp_seconds", "source", "127.0.0.3"); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last change = %v, want just now", got)
	}
	if got, _ := value(fams, "rotor_source_up", "source", "127.0.0.2"); got != 1 {
		t.Error("127.0.0.2 down too")
	}

	f.set("127.0.0.3", false)
	waitMetric(t, maddr, 1, "rotor_source_up", "source", "127.0.0.3")
	r.waitLog("back in rotation")
	seen := map[string]int{}
	for i := 0; i < 8; i++ {
		got, err := socksVia(ctx, r.sock, testUser, testPass, peer.Addr)
		if err != nil {
			t.Fatal(err)
		}
		seen[got]++
	}
	wantEach(t, seen, 2)

	// Every address failing: not ready, logged, and traffic still flows.
	for _, a := range poolAddrs {
		f.set(a, true)
	}
	for _, a := range poolAddrs {
		waitMetric(t, maddr, 0, "rotor_source_up", "source", a)
	}
	r.waitLog("every source address is down")
	if code, body := getStatus(t, "http://"+maddr+"/readyz"); code != 503 || !strings.Contains(body, "every source address is down") {
		t.Errorf("/readyz with all down: %d %s", code, body)
	}
	if _, err := socksVia(ctx, r.sock, testUser, testPass, peer.Addr); err != nil {
		t.Errorf("request with every address down: %v, want it sent anyway", err)
	}
}

package metrics

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/rotor-proxy/rotor/internal/testkit"
	"github.com/rotor-proxy/rotor/pool"
	"github.com/rotor-proxy/rotor/serve"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testPool(t testing.TB) *pool.Pool {
	t.Helper()
	p, err := testkit.Pool([]netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")}, pool.RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The per-request calls allocate nothing, and a nil Metrics is a valid
// "off" switch.
func TestHotPathDoesNotAllocate(t *testing.T) {
	p := testPool(t)
	m := New(func() *pool.Pool { return p }, "test")
	src := p.Sources()[1]
	refused := &testErr{syscall.ECONNREFUSED}
	allocs := testing.AllocsPerRun(1000, func() {
		s := m.Source(src)
		s.Request(HTTP, nil)
		s.Request(Connect, refused)
		s.Bytes(100, 2000)
		s.TunnelOpened()
		s.TunnelClosed()
		m.Dialed(src, time.Millisecond, nil)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per request, want 0", allocs)
	}
	var off *Metrics
	off.Source(src).Request(SOCKS5, nil)
	off.Dialed(src, time.Millisecond, nil)
	off.AddListener("http", func() int { return 0 }, nil).AuthFailed()
	if got := testutil.ToFloat64(m.sources.Get(p.Sources()[1]).requests[Connect][1+int(pool.ClassRefused)]); got != 1001 {
		t.Errorf("refused connects = %v, want 1001", got)
	}
}

type testErr struct{ err error }

func (e *testErr) Error() string { return "dial: " + e.err.Error() }
func (e *testErr) Unwrap() error { return e.err }

// Every family the README documents is exported, with its help text, and
// the registry is consistent (no duplicate or conflicting descriptors).
func TestExposition(t *testing.T) {
	p := testPool(t)
	m := New(func() *pool.Pool { return p }, "v1.2.3")
	var hits serve.Hits
	hits.Add(serve.MaxConns)
	m.AddListener("http", func() int { return 3 }, &hits).AuthFailed()
	m.Probed(p.Sources()[0], errors.New("x"))
	want := []string{
		"rotor_build_info", "rotor_source_requests_total", "rotor_source_dials_total",
		"rotor_source_dial_duration_seconds", "rotor_source_bytes_total", "rotor_source_active_tunnels",
		"rotor_source_health_probes_total", "rotor_source_up", "rotor_source_last_change_timestamp_seconds",
		"rotor_listener_active_connections", "rotor_listener_auth_failures_total",
		"rotor_listener_timeouts_total", "rotor_listener_limit_hits_total",
	}
	n, err := testutil.GatherAndCount(m.reg, want...)
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("nothing gathered")
	}
	have := exported(t, m)
	for _, w := range want {
		if !have[w] {
			t.Errorf("%s not exported", w)
		}
	}
	expected := `
# HELP rotor_listener_limit_hits_total Limits hit, by the flag or setting that sets them (max-conns, max-header-bytes, per-ip-rate, user-max-conns, user-rate, auth-backoff).
# TYPE rotor_listener_limit_hits_total counter
rotor_listener_limit_hits_total{limit="auth-backoff",listener="http"} 0
rotor_listener_limit_hits_total{limit="max-conns",listener="http"} 1
rotor_listener_limit_hits_total{limit="max-header-bytes",listener="http"} 0
rotor_listener_limit_hits_total{limit="per-ip-rate",listener="http"} 0
rotor_listener_limit_hits_total{limit="user-max-conns",listener="http"} 0
rotor_listener_limit_hits_total{limit="user-rate",listener="http"} 0
`
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(expected), "rotor_listener_limit_hits_total"); err != nil {
		t.Error(err)
	}
}

// Every rotor_ series the Grafana dashboard and README query exists, so
// neither drifts from the code.
func TestDashboardAndREADMEUseRealMetrics(t *testing.T) {
	p := testPool(t)
	m := New(func() *pool.Pool { return p }, "test")
	m.AddListener("http", func() int { return 0 }, nil)
	have := exported(t, m)
	name := regexp.MustCompile(`rotor_[a-z_]+`)
	for _, file := range []string{"../deploy/grafana-dashboard.json", "../README.md"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(file, ".json") && !json.Valid(b) {
			t.Fatalf("%s is not valid JSON", file)
		}
		found := 0
		for _, n := range name.FindAllString(string(b), -1) {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
			if !have[base] && !have[n] {
				t.Errorf("%s uses %s, which rotor does not export", file, n)
			}
			found++
		}
		if found < 10 {
			t.Errorf("%s names only %d rotor metrics", file, found)
		}
	}
}

// exported is the set of family names m's registry gathers.
func exported(t *testing.T, m *Metrics) map[string]bool {
	t.Helper()
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range fams {
		have[f.GetName()] = true
	}
	return have
}

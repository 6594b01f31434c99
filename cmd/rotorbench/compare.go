package main

import (
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/rotor-proxy/rotor/internal/target"
)

type compareOpts struct {
	Reps      int
	Duration  time.Duration
	Concs     []int
	IdleK     []int
	Sustain   time.Duration
	BulkSize  int64
	Out       string
	Command   string // as typed, for the report
	Peers     []string
	Workloads []string
	// Baseline, when set, is a git revision whose rotor runs beside this
	// build as the peer "rotor@REV", for a side-by-side table.
	Baseline string
	// CPUPerProxy, when above 0, limits each proxy process to that many
	// cores (see limitCPU).
	CPUPerProxy float64
}

func selected(list []string, name string, prefix bool) bool {
	if len(list) == 0 {
		return true
	}
	for _, l := range list {
		if l == name || (prefix && strings.HasPrefix(name, l)) {
			return true
		}
	}
	return false
}

// benchCase is one row group of the report: a workload at one
// concurrency, run for every peer that speaks its protocol and directly.
type benchCase struct {
	Workload string
	Conc     int
	K        int  // idle tunnels
	SOCKS    bool // SOCKS5 rather than HTTP
	ByName   bool
	UDP      bool // SOCKS5 UDP ASSOCIATE
	TLS      bool // the HTTP proxy inside TLS (an https:// proxy URL)
}

func (c benchCase) key() string {
	switch {
	case c.K > 0:
		return fmt.Sprintf("%s K=%d", c.Workload, c.K)
	case c.Conc > 0:
		return fmt.Sprintf("%s c=%d", c.Workload, c.Conc)
	}
	return c.Workload
}

func (c benchCase) bulk() bool { return strings.HasPrefix(c.Workload, "bulk") }
func (c benchCase) idle() bool { return c.K > 0 }

// run measures one case for one peer (nil: direct).
func (c benchCase) run(o compareOpts, tgt string, udpTgt netip.AddrPort, p *peer) result {
	ro := runOpts{Name: "direct", Target: tgt, Conc: c.Conc, Duration: o.Duration, ByName: c.ByName}
	if p != nil {
		ro.Name, ro.Via, ro.PID, ro.DebugAddr = p.Name, p.spec(c.SOCKS), p.PID(), p.DebugAddr
		ro.ExtraPIDs = p.extraPIDs()
		if c.TLS {
			ro.Via.HTTP, ro.Via.TLS = p.HTTPS, true
		}
	}
	var r result
	switch {
	case c.Workload == "udp-rtt":
		r = runUDPRoundTrips(ro, udpTgt)
	case c.Workload == "udp-stream":
		r = runUDPStream(ro, udpTgt, udpStreamRate, o.Sustain)
	case c.idle():
		r = runIdle(ro, c.Workload, c.K)
	case c.bulk():
		r = runBulk(ro, c.Workload, o.BulkSize)
	case strings.HasPrefix(c.Workload, "http-keepalive"):
		r = runKeepAlive(ro, c.Workload)
	default:
		r = runNewConn(ro, c.Workload)
	}
	r.Conc = c.Conc
	return r
}

// serves reports whether p takes part in case c.
func (c benchCase) serves(p *peer) bool {
	switch {
	case len(p.Workloads) > 0 && !selected(p.Workloads, c.Workload, true):
		return false
	case c.UDP:
		return p.UDP && p.SOCKS != ""
	case c.TLS:
		return p.HTTPS != ""
	case p.UDPOnly:
		return false
	case c.SOCKS:
		return p.SOCKS != ""
	}
	return p.HTTP != ""
}

// udpStreamRate is the udp-stream workload's rate: 1 MB/s.
const udpStreamRate = 1 << 20

// hasDirect: a direct run is the baseline of a proxied one, except where
// it would only repeat another row's (by name, through TLS).
func (c benchCase) hasDirect() bool { return !c.idle() && !c.ByName && !c.TLS }

func cases(o compareOpts) []benchCase {
	var cs []benchCase
	for _, c := range o.Concs {
		cs = append(cs,
			benchCase{Workload: "http-keepalive", Conc: c},
			benchCase{Workload: "connect-new", Conc: c},
			benchCase{Workload: "socks5-new", Conc: c, SOCKS: true},
			benchCase{Workload: "socks5-new-domain", Conc: c, SOCKS: true, ByName: true},
			benchCase{Workload: "http-keepalive-tls", Conc: c, TLS: true},
			benchCase{Workload: "connect-new-tls", Conc: c, TLS: true},
		)
	}
	cs = append(cs, benchCase{Workload: "bulk-connect"}, benchCase{Workload: "bulk-socks5", SOCKS: true})
	cs = append(cs, benchCase{Workload: "udp-rtt", Conc: 1, SOCKS: true, UDP: true})
	for _, c := range o.Concs {
		cs = append(cs, benchCase{Workload: "udp-rtt", Conc: c, SOCKS: true, UDP: true})
	}
	if o.Sustain > 0 {
		cs = append(cs, benchCase{Workload: "udp-stream", SOCKS: true, UDP: true})
	}
	for _, k := range o.IdleK {
		cs = append(cs, benchCase{Workload: "idle-connect", K: k}, benchCase{Workload: "idle-socks5", K: k, SOCKS: true})
	}
	var out []benchCase
	for _, c := range cs {
		if selected(o.Workloads, c.Workload, true) {
			out = append(out, c)
		}
	}
	return out
}

func compare(o compareOpts, log io.Writer) error {
	repo, err := findRepo()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "rotorbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "rotor")
	build := exec.Command("go", "build", "-o", bin, "./cmd/rotor")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building rotor: %v\n%s", err, out)
	}
	var baseBin, baseName string
	if o.Baseline != "" {
		baseName = "rotor@" + o.Baseline
		if baseBin, err = buildRevision(repo, o.Baseline, tmp); err != nil {
			return err
		}
	}
	tgt, err := target.HTTP("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer tgt.Close()
	echo, err := startUDPEcho()
	if err != nil {
		return err
	}
	defer echo.Close()

	cp, err := makeCert(bin, tmp)
	if err != nil {
		return err
	}
	pp := &ports{next: 21000}
	var peers []*peer
	var missing []string
	defer func() {
		for _, p := range peers {
			p.stop()
		}
	}()
	starters := []struct {
		name  string
		start func() (*peer, error)
	}{
		{"rotor", func() (*peer, error) { return startRotorPeer("rotor", bin, pp, cp, false) }},
		{"rotor-mixed", func() (*peer, error) { return startRotorPeer("rotor-mixed", bin, pp, cp, true) }},
		{baseName, func() (*peer, error) { return startRotorPeer(baseName, baseBin, pp, nil, false) }},
		{"squid", func() (*peer, error) { return startSquid(repo, pp, cp) }},
		{"rotor-chain", func() (*peer, error) { return startRotorChain(bin, pp) }},
		{"squid-chain", func() (*peer, error) { return startSquidChain(repo, pp) }},
		{"tinyproxy", func() (*peer, error) { return startTinyproxy(repo, pp) }},
		{"microsocks", func() (*peer, error) { return startMicrosocks(pp) }},
		{"dante", func() (*peer, error) { return startDante(repo, pp) }},
	}
	restart := map[string]func() (*peer, error){}
	for _, s := range starters {
		if s.name == "" || !selected(o.Peers, strings.TrimSuffix(s.name, "@"+o.Baseline), false) {
			continue
		}
		start := s.start
		if o.CPUPerProxy > 0 {
			start = func() (*peer, error) {
				p, err := s.start()
				if err == nil {
					if err = limitCPU(p, o.CPUPerProxy); err != nil {
						p.stop()
					}
				}
				return p, err
			}
		}
		restart[s.name] = start
		p, err := start()
		if err == errNotInstalled {
			missing = append(missing, s.name)
			continue
		}
		if err != nil {
			return fmt.Errorf("starting %s: %w", s.name, err)
		}
		peers = append(peers, p)
		fmt.Fprintf(log, "started %s (pid %d)\n", p.Name, p.PID())
	}

	all := map[string][]result{}
	cs := cases(o)
	for rep := 0; rep < o.Reps; rep++ {
		for _, c := range cs {
			var runners []*peer
			for _, p := range peers {
				if c.serves(p) {
					runners = append(runners, p)
				}
			}
			if c.hasDirect() {
				runners = append(runners, nil)
			}
			// Interleave: each repetition starts with a different proxy, so
			// that drift on a noisy machine spreads over all of them.
			for i := range runners {
				p := runners[(i+rep)%len(runners)]
				if c.idle() {
					// Per-tunnel figures are deltas: measure them on a fresh
					// process, not one whose pools and heap earlier runs filled.
					if p, err = renew(peers, p, restart[p.Name]); err != nil {
						return err
					}
				}
				r := c.run(o, tgt.Addr, echo.addr(), p)
				all[c.key()] = append(all[c.key()], r)
				fmt.Fprintf(log, "rep %d %-28s %-10s %s\n", rep+1, c.key(), r.Proxy, brief(r))
				// Let TIME_WAIT and the peer settle between runs.
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
	var sustained []result
	if rot := find(peers, "rotor"); rot != nil && o.Sustain > 0 {
		for _, c := range []benchCase{{Workload: "connect-new", Conc: 16}, {Workload: "socks5-new", Conc: 16, SOCKS: true}} {
			ro := runOpts{Name: rot.Name, Via: rot.spec(c.SOCKS), Target: tgt.Addr, Conc: c.Conc, Duration: o.Sustain,
				PID: rot.PID(), Window: 10 * time.Second}
			r := runNewConn(ro, c.Workload)
			r.Conc = c.Conc
			fmt.Fprintf(log, "sustained %s %s windows %v\n", c.key(), brief(r), r.Windows)
			sustained = append(sustained, r)
		}
	}
	fmt.Fprintln(log, "go test -bench Pick ./pool/")
	poolBench := exec.Command("go", "test", "-run", "^$", "-bench", ".", "-benchmem", "-cpu", "1,2", "./pool/")
	poolBench.Dir = repo
	poolOut, err := poolBench.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pool benchmark: %v\n%s", err, poolOut)
	}

	fmt.Fprintln(log, "rotorbench pick")
	picks, err := measurePicks()
	if err != nil {
		return err
	}

	findings, _ := os.ReadFile(filepath.Join(repo, "cmd", "rotorbench", "findings.md"))
	commit := "unknown"
	if out, err := exec.Command("git", "-C", repo, "describe", "--always", "--dirty").Output(); err == nil {
		commit = "`" + strings.TrimSpace(string(out)) + "`"
	}
	rep := report{opts: o, cases: cs, medians: map[string][]result{}, all: all, sustained: sustained,
		poolBench: string(poolOut), picks: picks, missing: missing, findings: string(findings), commit: commit}
	for _, c := range cs {
		rep.medians[c.key()] = medians(all[c.key()], c)
	}
	f, err := os.Create(o.Out)
	if err != nil {
		return err
	}
	defer f.Close()
	rep.write(f)
	return nil
}

// renew stops p and starts a fresh process in its place in ps.
func renew(ps []*peer, p *peer, start func() (*peer, error)) (*peer, error) {
	p.stop()
	np, err := start()
	if err != nil {
		return nil, fmt.Errorf("restarting %s: %w", p.Name, err)
	}
	for i := range ps {
		if ps[i] == p {
			ps[i] = np
		}
	}
	return np, nil
}

func find(ps []*peer, name string) *peer {
	for _, p := range ps {
		if p.Name == name {
			return p
		}
	}
	return nil
}

func brief(r result) string {
	switch {
	case r.Tunnels > 0:
		return fmt.Sprintf("tunnels=%d rss/t=%.0fB fds/t=%.2f gor/t=%.2f err=%d %s", r.Requests, r.RSSPer, r.FDsPer, r.GoroutinePer, r.Errors, r.FirstErr)
	case r.Bytes > 0:
		return fmt.Sprintf("%.0f MB/s err=%d %s", r.MBps(), r.Errors, r.FirstErr)
	}
	return fmt.Sprintf("%.0f req/s p99=%s cpu/1k=%s err=%d %s", r.RPS(), r.P99.Round(time.Microsecond), r.CPU.Round(time.Millisecond), r.Errors, r.FirstErr)
}

// metric is what a case is ranked by.
func metric(r result, c benchCase) float64 {
	switch {
	case c.idle():
		return r.RSSPer
	case c.bulk():
		return r.MBps()
	}
	return r.RPS()
}

// medians returns, per proxy, the run with the median metric.
func medians(rs []result, c benchCase) []result {
	by := map[string][]result{}
	var order []string
	for _, r := range rs {
		if _, ok := by[r.Proxy]; !ok {
			order = append(order, r.Proxy)
		}
		by[r.Proxy] = append(by[r.Proxy], r)
	}
	var out []result
	for _, name := range order {
		runs := by[name]
		slices.SortFunc(runs, func(a, b result) int { return cmp.Compare(metric(a, c), metric(b, c)) })
		out = append(out, runs[len(runs)/2])
	}
	return out
}

// findRepo walks up from the working directory to the directory with go.mod.
func findRepo() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory: run from the repository")
		}
		dir = parent
	}
}

func machine() string {
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d cores (%s), Linux %s, %s", runtime.NumCPU(), model, strings.TrimSpace(string(kernel)), runtime.Version())
}

// buildRevision builds cmd/rotor as it was at rev (git archive, so the
// working tree is untouched) into dir and returns the binary's path.
func buildRevision(repo, rev, dir string) (string, error) {
	src := filepath.Join(dir, "baseline-src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	archive := exec.Command("sh", "-c", `git archive --format=tar "$1" | tar -x -C "$2"`, "sh", rev, src)
	archive.Dir = repo
	if out, err := archive.CombinedOutput(); err != nil {
		return "", fmt.Errorf("git archive %s: %v\n%s", rev, err, out)
	}
	bin := filepath.Join(dir, "rotor-baseline")
	build := exec.Command("go", "build", "-o", bin, "./cmd/rotor")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building rotor at %s: %v\n%s", rev, err, out)
	}
	return bin, nil
}

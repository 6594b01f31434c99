package main

import (
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
)

type report struct {
	opts      compareOpts
	cases     []benchCase
	medians   map[string][]result
	all       map[string][]result
	sustained []result
	poolBench string
	picks     []pickResult // fixed addresses vs CIDR blocks
	missing   []string
	findings  string // cmd/rotorbench/findings.md, appended as written
	commit    string
}

func (rp *report) get(c benchCase, proxy string) (result, bool) {
	for _, r := range rp.medians[c.key()] {
		if r.Proxy == proxy {
			return r, true
		}
	}
	return result{}, false
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64)
}

func (rp *report) write(w io.Writer) {
	o := rp.opts
	fmt.Fprintf(w, "# rotor benchmarks\n\n")
	fmt.Fprintf(w, "Measured %s on %s, rotor built from commit %s.\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), machine(), rp.commit)
	fmt.Fprintf(w, "Command, from the repository root (it installs nothing; peers missing from the machine are skipped):\n\n```sh\n%s\n```\n\n", o.Command)
	fmt.Fprintf(w, "Everything runs on this one machine over loopback: the load generator and the target (`GET /ip` answers the peer "+
		"address, `GET /bytes/N` answers N bytes) share the cores with the proxy under test, so absolute figures are lower than on "+
		"separate machines; ratios between proxies in the same run are the point. Each workload ran %d times for %s per proxy, "+
		"interleaved (each repetition starts with a different proxy); tables show the median run by the ranking metric. "+
		"rotor runs with a pool of 127.0.0.2-127.0.0.5; all proxies require authentication (Basic or RFC 1929) and have access logs "+
		"and caching off (configs in `testdata/peers/`). CPU is the proxy's process-tree user+system time per 1,000 requests "+
		"(from /proc, 10 ms resolution).\n\n", o.Reps, o.Duration)
	if o.CPUPerProxy > 0 {
		fmt.Fprintf(w, "Each proxy process (each hop of a chain apart) ran in a CPU cgroup of its own limited to %g cores "+
			"(`--cpu-per-proxy`), as if on a host of its own; the load generator and the target were not limited.\n\n", o.CPUPerProxy)
	}
	if len(rp.missing) > 0 {
		fmt.Fprintf(w, "Not installed, so not measured: %s.\n\n", strings.Join(rp.missing, ", "))
	}

	fmt.Fprintf(w, "## Targets\n\n| # | target | measured | status |\n|---|---|---|---|\n")
	for _, t := range rp.targets() {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", t.id, t.goal, t.measured, t.status)
	}
	fmt.Fprintln(w)

	for _, c := range rp.cases {
		rs := rp.medians[c.key()]
		if len(rs) == 0 {
			continue
		}
		fmt.Fprintf(w, "## %s\n\n", c.key())
		switch {
		case c.idle():
			fmt.Fprintf(w, "| proxy | tunnels open | RSS per tunnel | fds per tunnel | goroutines per tunnel | errors |\n|---|---|---|---|---|---|\n")
			for _, r := range rs {
				g := "-"
				if r.GoroutinePer >= 0 {
					g = fmt.Sprintf("%.2f", r.GoroutinePer)
				}
				fmt.Fprintf(w, "| %s | %d | %.1f KB | %.2f | %s | %s |\n", r.Proxy, r.Requests, r.RSSPer/1024, r.FDsPer, g, errCell(r))
			}
		case c.bulk():
			direct, _ := rp.get(c, "direct")
			fmt.Fprintf(w, "| proxy | MB/s | vs direct | errors |\n|---|---|---|---|\n")
			for _, r := range rs {
				fmt.Fprintf(w, "| %s | %.0f | %s | %s |\n", r.Proxy, r.MBps(), ratio(r.MBps(), direct.MBps()), errCell(r))
			}
		default:
			direct, _ := rp.get(c, "direct")
			fmt.Fprintf(w, "| proxy | req/s | vs direct | p50 ms | p90 ms | p99 ms | CPU ms / 1k req | errors | source addresses seen |\n|---|---|---|---|---|---|---|---|---|\n")
			for _, r := range rs {
				cpu := "-"
				if r.CPU >= 0 {
					cpu = ms(r.CPU)
				}
				if r.GatewayCPU > 0 {
					cpu += fmt.Sprintf(" (gateway %s, exit %s)", ms(r.GatewayCPU), ms(r.CPU-r.GatewayCPU))
				}
				fmt.Fprintf(w, "| %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n", r.Proxy, r.RPS(), ratio(r.RPS(), direct.RPS()),
					ms(r.P50), ms(r.P90), ms(r.P99), cpu, errCell(r), sourceList(r.Sources))
			}
		}
		fmt.Fprintln(w)
	}
	rp.writeBaseline(w)
	if len(rp.sustained) > 0 {
		fmt.Fprintf(w, "## Sustained new connections (rotor, c=16, %s, 10 s windows)\n\n| workload | req/s per window | last / first |\n|---|---|---|\n", o.Sustain)
		for _, r := range rp.sustained {
			fmt.Fprintf(w, "| %s | %s | %s |\n", r.Workload, windowList(r.Windows), sustainRatio(r))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "## Pool selection\n\n`go test -run '^$' -bench . -benchmem -cpu 1,2 ./pool/`:\n\n```\n%s```\n", rp.poolBench)
	if len(rp.picks) > 0 {
		fmt.Fprintf(w, "\nPick cost, fixed addresses next to CIDR blocks (round-robin pick plus the address bound; "+
			"`go run ./cmd/rotorbench pick` prints the same alone):\n\n```\n")
		writePicks(w, rp.picks)
		fmt.Fprintf(w, "```\n")
	}
	if rp.findings != "" {
		fmt.Fprintf(w, "\n%s", rp.findings)
	}
}

func errCell(r result) string {
	if r.Errors == 0 {
		return "0"
	}
	e := r.FirstErr
	if len(e) > 60 {
		e = e[:60] + "..."
	}
	return fmt.Sprintf("%d (%s)", r.Errors, strings.ReplaceAll(e, "|", "/"))
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func windowList(ws []int64) string {
	var s []string
	for _, n := range ws {
		s = append(s, strconv.FormatInt(n/10, 10))
	}
	return strings.Join(s, ", ")
}

func sustainRatio(r result) string {
	if len(r.Windows) < 2 || r.Windows[0] == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", float64(r.Windows[len(r.Windows)-1])/float64(r.Windows[0]))
}

type targetRow struct{ id, goal, measured, status string }

func status(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func (rp *report) targets() []targetRow {
	var rows []targetRow
	na := func(id, goal, why string) { rows = append(rows, targetRow{id, goal, why, "not measured"}) }
	for _, c := range rp.cases {
		rot, ok := rp.get(c, "rotor")
		if !ok {
			continue
		}
		switch {
		case c.Workload == "http-keepalive":
			sq, ok := rp.get(c, "squid")
			goal := fmt.Sprintf("%s: ≥ 2x squid's req/s, p99 ≤ squid's", c.key())
			if !ok {
				na("1", goal, "squid not installed")
				break
			}
			rows = append(rows, targetRow{"1", goal,
				fmt.Sprintf("%.0f vs %.0f req/s (%s); p99 %s vs %s ms", rot.RPS(), sq.RPS(), ratio(rot.RPS(), sq.RPS()), ms(rot.P99), ms(sq.P99)),
				status(rot.RPS() >= 2*sq.RPS() && rot.P99 <= sq.P99)})
		case c.Workload == "connect-new" || c.Workload == "socks5-new":
			best, bestName := 0.0, ""
			for _, r := range rp.medians[c.key()] {
				if !strings.HasPrefix(r.Proxy, "rotor") && r.Proxy != "direct" && r.RPS() > best {
					best, bestName = r.RPS(), r.Proxy
				}
			}
			goal := fmt.Sprintf("%s: ≥ 1.1x the best peer's req/s", c.key())
			if bestName == "" {
				na("2", goal, "no peer installed")
				break
			}
			rows = append(rows, targetRow{"2", goal, fmt.Sprintf("%.0f vs %s %.0f (%s)", rot.RPS(), bestName, best, ratio(rot.RPS(), best)),
				status(rot.RPS() >= 1.1*best)})
		case c.bulk():
			d, _ := rp.get(c, "direct")
			rows = append(rows, targetRow{"3", c.key() + ": ≥ 0.65x direct",
				fmt.Sprintf("%.0f vs %.0f MB/s (%s)", rot.MBps(), d.MBps(), ratio(rot.MBps(), d.MBps())), status(rot.MBps() >= 0.65*d.MBps())})
		case c.Workload == "udp-rtt":
			goal := c.key() + ": ≥ 1.2x dante's round trips/s"
			dt, ok := rp.get(c, "dante")
			if !ok {
				na("7", goal, "dante-server not installed")
				break
			}
			rows = append(rows, targetRow{"7", goal, fmt.Sprintf("%.0f vs %.0f (%s)", rot.RPS(), dt.RPS(), ratio(rot.RPS(), dt.RPS())),
				status(rot.RPS() >= 1.2*dt.RPS())})
		case c.Workload == "udp-stream":
			d, _ := rp.get(c, "direct")
			rows = append(rows, targetRow{"7", fmt.Sprintf("udp-stream, 1 MB/s for %s: loses no more than the loopback", rp.opts.Sustain),
				fmt.Sprintf("%d of %d lost (direct: %d of %d)", rot.Errors, rot.Requests, d.Errors, d.Requests), status(rot.Errors <= d.Errors)})
		case c.idle():
			rows = append(rows, targetRow{"4", c.key() + ": ≤ 6 KB RSS and exactly 2 fds per tunnel",
				fmt.Sprintf("%.1f KB, %.2f fds (%d tunnels)", rot.RSSPer/1024, rot.FDsPer, rot.Requests),
				status(rot.Requests == int64(c.K) && rot.RSSPer <= 6*1024 && math.Abs(rot.FDsPer-2) < 0.01)})
		}
		if !c.idle() && !c.bulk() && !c.ByName && !c.UDP && rot.CPU >= 0 {
			best, bestName := time.Duration(math.MaxInt64), ""
			for _, r := range rp.medians[c.key()] {
				if !strings.HasPrefix(r.Proxy, "rotor") && r.Proxy != "direct" && r.CPU > 0 && r.CPU < best {
					best, bestName = r.CPU, r.Proxy
				}
			}
			goal := fmt.Sprintf("%s: CPU per request ≤ half the best peer's", c.key())
			if bestName == "" {
				na("5", goal, "no peer installed")
				continue
			}
			rows = append(rows, targetRow{"5", goal, fmt.Sprintf("%s vs %s %s ms / 1k req", ms(rot.CPU), bestName, ms(best)),
				status(rot.CPU*2 <= best)})
		}
	}
	for _, r := range rp.sustained {
		ok := len(r.Windows) >= 2 && float64(r.Windows[len(r.Windows)-1]) >= 0.9*float64(r.Windows[0])
		rows = append(rows, targetRow{"2", fmt.Sprintf("%s c=%d sustained %s: last 10 s ≥ 0.9x first 10 s", r.Workload, r.Conc, rp.opts.Sustain),
			sustainRatio(r), status(ok)})
	}
	re := regexp.MustCompile(`(?m)^BenchmarkPick/([a-z-]+)\s+\d+\s+([\d.]+) ns/op\s+\d+ B/op\s+(\d+) allocs/op`)
	for _, m := range re.FindAllStringSubmatch(rp.poolBench, -1) {
		ns, _ := strconv.ParseFloat(m[2], 64)
		rows = append(rows, targetRow{"6", "pool " + m[1] + ", one core: ≤ 10 ns/op, 0 allocs/op",
			fmt.Sprintf("%s ns/op, %s allocs/op", m[2], m[3]), status(ns <= 10 && m[3] == "0")})
	}
	return rows
}

// writeBaseline writes this build beside the --baseline revision, same
// run, same interleaving: throughput and CPU ratios, and the idle
// tunnels' memory and descriptors.
func (rp *report) writeBaseline(w io.Writer) {
	if rp.opts.Baseline == "" {
		return
	}
	base := "rotor@" + rp.opts.Baseline
	fmt.Fprintf(w, "## This build against %s\n\nSame run, interleaved; ratios are this build over the baseline (throughput: higher is better; CPU, RSS: lower is better).\n\n", base)
	fmt.Fprintf(w, "| workload | this build | %s | ratio | CPU this build | CPU baseline | CPU ratio |\n|---|---|---|---|---|---|---|\n", base)
	for _, c := range rp.cases {
		now, ok1 := rp.get(c, "rotor")
		was, ok2 := rp.get(c, base)
		if !ok1 || !ok2 {
			continue
		}
		switch {
		case c.idle():
			fmt.Fprintf(w, "| %s | %.1f KB, %.2f fds per tunnel | %.1f KB, %.2f fds | %s (RSS) | - | - | - |\n",
				c.key(), now.RSSPer/1024, now.FDsPer, was.RSSPer/1024, was.FDsPer, ratio(now.RSSPer, was.RSSPer))
		case c.bulk():
			fmt.Fprintf(w, "| %s | %.0f MB/s | %.0f MB/s | %s | - | - | - |\n", c.key(), now.MBps(), was.MBps(), ratio(now.MBps(), was.MBps()))
		default:
			fmt.Fprintf(w, "| %s | %.0f req/s | %.0f req/s | %s | %s | %s | %s |\n", c.key(), now.RPS(), was.RPS(), ratio(now.RPS(), was.RPS()),
				ms(now.CPU), ms(was.CPU), ratio(float64(now.CPU), float64(was.CPU)))
		}
	}
	fmt.Fprintln(w)
}

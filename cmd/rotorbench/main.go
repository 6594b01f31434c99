// Command rotorbench measures rotor against direct connections and against
// the peer proxies users would pick instead (squid, tinyproxy,
// microsocks), on one machine, in one run.
//
//	rotorbench compare                    every workload, every peer found; writes BENCHMARKS.md
//	rotorbench compare --quick            a short smoke run
//	rotorbench pick                       what choosing a source costs: fixed addresses vs CIDR blocks
//
// Workloads: http-keepalive (persistent clients, absolute-form GET),
// connect-new and socks5-new (a new client connection per request: tunnel
// set-up, one GET, close; SOCKS5 by IP and by name), bulk (1 GiB through one
// tunnel), idle (K open tunnels: the proxy's RSS, fds and goroutines per
// tunnel), http-keepalive-tls and connect-new-tls (the same, to the HTTP
// proxy inside TLS: rotor's --https-listen, squid's https_port, on one
// certificate), and direct, the baseline of every ratio. The peer
// rotor-mixed is rotor serving everything on its mixed port (--listen),
// to weigh that port against the dedicated listeners. The peers
// rotor-chain and squid-chain are two processes each, a gateway in front
// of an exit (rotor: an http:// upstream entry; squid: cache_peer parent),
// measured on new connections and bulk transfers (chain.go).
package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "pick" {
		rs, err := measurePicks()
		if err != nil {
			fmt.Fprintf(os.Stderr, "rotorbench: %v\n", err)
			os.Exit(1)
		}
		writePicks(os.Stdout, rs)
		return
	}
	if len(os.Args) < 2 || os.Args[1] != "compare" {
		fmt.Fprintln(os.Stderr, "usage: rotorbench compare [flags]   (see --help)\n       rotorbench pick")
		os.Exit(2)
	}
	fs := pflag.NewFlagSet("rotorbench compare", pflag.ContinueOnError)
	o := compareOpts{}
	fs.IntVar(&o.Reps, "reps", 3, "repetitions of every workload (the median is reported)")
	fs.DurationVar(&o.Duration, "duration", 5*time.Second, "length of each timed run")
	fs.IntSliceVar(&o.Concs, "conc", []int{16, 256}, "client concurrencies")
	fs.IntSliceVar(&o.IdleK, "idle", []int{1000, 9000}, "idle tunnel counts (the fd hard limit here is 20000: the bench holds 2 per tunnel)")
	fs.DurationVar(&o.Sustain, "sustain", 60*time.Second, "length of the sustained new-connection runs; 0 skips them")
	fs.Int64Var(&o.BulkSize, "bulk", 1<<30, "bytes per bulk transfer")
	fs.StringVar(&o.Out, "out", "BENCHMARKS.md", "report file")
	fs.StringSliceVar(&o.Peers, "peers", nil, "only these proxies (rotor, rotor-mixed, rotor-chain, squid, squid-chain, tinyproxy, microsocks, dante); default all found")
	fs.StringSliceVar(&o.Workloads, "workloads", nil, "only workloads whose name starts with one of these (e.g. socks5-new,idle)")
	fs.StringVar(&o.Baseline, "baseline", "", "a git revision to build and run beside this build as the peer rotor@REV, with a side-by-side table")
	fs.Float64Var(&o.CPUPerProxy, "cpu-per-proxy", 0, "limit each proxy process (each hop of a chain apart) to this many cores in a cgroup of its own, as if on a host of its own; needs root")
	quick := fs.Bool("quick", false, "smoke run: 1 repetition of 1 s, c=16, K=200, 64 MiB bulk, no sustained run")
	if err := fs.Parse(os.Args[2:]); err != nil {
		os.Exit(2)
	}
	if *quick {
		o.Reps, o.Duration, o.Concs, o.IdleK, o.Sustain, o.BulkSize = 1, time.Second, []int{16}, []int{200}, 0, 64<<20
	}
	o.Command = "go run ./cmd/rotorbench " + strings.Join(os.Args[1:], " ")
	if err := compare(o, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "rotorbench: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n", o.Out)
}

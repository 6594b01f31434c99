package main

import (
	"fmt"
	"strconv"
	"strings"
)

// Chains: a gateway proxy in front of an exit proxy, as rotor runs across
// many hosts (README, "Many hosts"). Measured on new connections and bulk
// transfers only: against the exit alone (what the second hop costs) and
// against the same chain built from squid (cache_peer parent), glider and
// gost not being served by this machine's module proxy.
var chainWorkloads = []string{"connect-new", "socks5-new", "bulk-"}

// startRotorChain runs an exit rotor (the pool of four) and a gateway
// rotor whose pool is the exit, as an http:// upstream entry: one round
// trip per tunnel (CONNECT with credentials), where SOCKS5 takes three
// (about 20% more CPU per connection through the chain: BENCHMARKS.md says
// how it was measured).
func startRotorChain(bin string, pp *ports) (*peer, error) {
	exit, err := startRotorPeer("rotor-exit", bin, pp, nil, false)
	if err != nil {
		return nil, err
	}
	gw := &peer{Name: "rotor-chain", Workloads: chainWorkloads, exit: exit}
	if gw.dir, err = peerDir("rotor"); err != nil {
		exit.stop()
		return nil, err
	}
	hp, _ := pp.take()
	sp, _ := pp.take()
	dp, err := pp.take()
	if err != nil {
		exit.stop()
		return nil, err
	}
	gw.HTTP, gw.SOCKS, gw.DebugAddr = addr(hp), addr(sp), addr(dp)
	entry := "http://" + benchUser + ":" + benchPass + "@" + exit.HTTP
	if err := startCmd(gw, bin, "--pool", entry, "--http-listen", gw.HTTP, "--socks-listen", gw.SOCKS,
		"--debug-listen", gw.DebugAddr, "--user", benchUser, "--pass", benchPass, "--log-level", "warn",
		"--allow-dest", "127.0.0.0/8"); err != nil {
		exit.stop()
		return nil, err
	}
	return gw, nil
}

// startSquidChain runs an exit squid and a gateway squid that sends
// everything to it (cache_peer parent, never_direct), both with Basic
// auth: testdata/peers/squid.conf and squid-gateway.conf.
func startSquidChain(repo string, pp *ports) (*peer, error) {
	exit, err := startSquid(repo, pp, nil)
	if err != nil {
		return nil, err
	}
	exit.Name = "squid-exit"
	_, port, _ := strings.Cut(exit.HTTP, ":")
	exitPort, err := strconv.Atoi(port)
	if err != nil {
		exit.stop()
		return nil, fmt.Errorf("squid exit address %q: %w", exit.HTTP, err)
	}
	gw, err := startConfPeerAs(repo, pp, "squid-gateway", "squid", map[string]any{"ExitPort": exitPort}, squidHtpasswd,
		func(conf string) []string { return []string{"-N", "-f", conf} })
	if err != nil {
		exit.stop()
		return nil, err
	}
	gw.Name, gw.Workloads, gw.exit = "squid-chain", chainWorkloads, exit
	return gw, nil
}

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// --cpu-per-proxy puts each proxy process (each hop of a chain apart, with
// the workers it forks) in a CPU cgroup of its own, limited to that many
// cores: as if each ran on a host of its own, the load generator and the
// target on another. On one small machine every process otherwise shares
// the same cores, and a chain's second hop takes its CPU from the first.
// Needs root and the cpu controller (cgroup v2, or v1's cpu hierarchy).

// cgroupPeriod is the CFS period the quota is a share of.
const cgroupPeriod = 100_000 // µs

// limitCPU confines p's process tree, and its exit's, to cores.
func limitCPU(p *peer, cores float64) error {
	for q := p; q != nil; q = q.exit {
		dir, err := newCPUCgroup(fmt.Sprintf("rotorbench-%d-%s", os.Getpid(), q.Name), cores)
		if err != nil {
			return err
		}
		q.cgroup = dir
		for _, pid := range procTree(q.PID()) {
			if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
				return fmt.Errorf("moving %s (pid %d) into %s: %w", q.Name, pid, dir, err)
			}
		}
	}
	return nil
}

// newCPUCgroup makes a cgroup limited to cores and returns its directory.
func newCPUCgroup(name string, cores float64) (string, error) {
	quota := int(cores * cgroupPeriod)
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		dir := filepath.Join("/sys/fs/cgroup", name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return "", fmt.Errorf("cgroup v2: %w", err)
		}
		return dir, os.WriteFile(filepath.Join(dir, "cpu.max"), fmt.Appendf(nil, "%d %d", quota, cgroupPeriod), 0)
	}
	dir := filepath.Join("/sys/fs/cgroup/cpu", name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("cgroup v1 cpu hierarchy: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cpu.cfs_period_us"), []byte(strconv.Itoa(cgroupPeriod)), 0); err != nil {
		return dir, err
	}
	return dir, os.WriteFile(filepath.Join(dir, "cpu.cfs_quota_us"), []byte(strconv.Itoa(quota)), 0)
}

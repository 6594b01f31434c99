package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ: /proc reports CPU times in these units. It is 100
// on every Linux architecture Go supports.
const clockTick = 100

// procTree returns pid and all its descendants.
func procTree(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp, ok := ppid(p); ok {
			children[pp] = append(children[pp], p)
		}
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// statFields returns the fields of /proc/PID/stat after the command name.
func statFields(pid int) ([]string, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, false
	}
	return strings.Fields(s[i+1:]), true
}

func ppid(pid int) (int, bool) {
	f, ok := statFields(pid)
	if !ok || len(f) < 2 {
		return 0, false
	}
	p, err := strconv.Atoi(f[1])
	return p, err == nil
}

// cpuTime is the user+system CPU time of pid and its descendants, those
// that have exited included: a process reaped by its parent leaves /proc,
// and its time (its own children's with it) moves to the parent's cutime
// and cstime. Without those, a proxy that forks workers and retires them
// (dante) showed less CPU at the end of a run than at its start.
func cpuTime(pid int) time.Duration {
	var ticks int64
	for _, p := range procTree(pid) {
		f, ok := statFields(p)
		if !ok || len(f) < 15 {
			continue
		}
		// utime, stime, cutime and cstime are fields 14 to 17 of stat;
		// f starts at field 3.
		for _, v := range f[11:15] {
			n, _ := strconv.ParseInt(v, 10, 64)
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / clockTick
}

// rssBytes is the resident set of pid and its descendants.
func rssBytes(pid int) int64 {
	var total int64
	for _, p := range procTree(pid) {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
				total += kb << 10
			}
		}
		f.Close()
	}
	return total
}

// fdCount is the number of open descriptors of pid and its descendants.
func fdCount(pid int) int {
	n := 0
	for _, p := range procTree(pid) {
		e, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p))
		n += len(e)
	}
	return n
}

// goroutines reads the total from a Go process's pprof endpoint
// (rotor --debug-listen); -1 when there is none.
func goroutines(debugAddr string) int {
	if debugAddr == "" {
		return -1
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + debugAddr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(io.LimitReader(resp.Body, 4096)).ReadString('\n')
	// "goroutine profile: total 12"
	n, err := strconv.Atoi(strings.TrimSpace(line[strings.LastIndexByte(line, ' ')+1:]))
	if err != nil {
		return -1
	}
	return n
}

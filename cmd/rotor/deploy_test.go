package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/config"
)

// The systemd unit does not restart-loop on a configuration error, and
// gives the drain its full time before SIGKILL.
func TestSystemdUnit(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../deploy/rotor.service")
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			set[k] = v
		}
	}
	if set["RestartPreventExitStatus"] != "2" {
		t.Errorf("RestartPreventExitStatus=%q, want 2: a configuration error exits 2 and must not restart every %s", set["RestartPreventExitStatus"], set["RestartSec"])
	}
	stop, err := time.ParseDuration(set["TimeoutStopSec"])
	if err != nil || stop <= config.DefaultShutdownTimeout {
		t.Errorf("TimeoutStopSec=%q: want longer than the shutdown timeout (%s)", set["TimeoutStopSec"], config.DefaultShutdownTimeout)
	}
	if ign, err := os.ReadFile("../../.dockerignore"); err != nil || !strings.Contains(string(ign), ".git\n") {
		t.Errorf(".dockerignore: %v, want .git left out of the image's build context", err)
	}
}

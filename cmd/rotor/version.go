package main

import (
	"runtime"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3" (the
// Dockerfile does, since .git stays out of the image); left empty, the
// module version from the build information is used.
var version string

// versionLine is what --version and "rotor version" print: the version,
// the VCS revision the binary was built from (go build stamps it from a
// git checkout unless -buildvcs=false, which GOFLAGS may set), and Go's.
func versionLine() string {
	v, rev, at, modified := version, "", "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				at = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	line := "rotor " + v
	switch {
	case rev == "":
		line += ", revision unknown (built without VCS stamping: go build -buildvcs=true)"
	default:
		line += ", revision " + rev[:min(12, len(rev))]
		if at != "" {
			line += " of " + at
		}
		if modified {
			line += " with uncommitted changes"
		}
	}
	return line + ", " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
}

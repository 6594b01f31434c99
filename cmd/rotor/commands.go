package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// stdio is what a command reads and writes, and its environment.
type stdio struct {
	stdin          *os.File
	stdout, stderr io.Writer
	getenv         func(string) string
}

// command is a subcommand of rotor. Its flags are parsed before run, so
// that --help and a mistyped flag are answered the same way for each.
type command struct {
	name, usage, summary string
	flags                func() *pflag.FlagSet
	run                  func(ctx context.Context, std stdio, fs *pflag.FlagSet) error
}

// commands lists rotor's subcommands, in help's order. Without one, rotor
// serves.
func commands() []command {
	return []command{
		{"demo", "rotor demo", "run a self-contained demo on loopback", noFlags("demo"), runDemo},
		{"check", "rotor check --pool IP[,IP...] --url URL", "fetch URL once from every address and show what the remote saw", checkFlags, runCheck},
		{"passwd", "rotor passwd [--cost N] NAME", "print a users-file line with a bcrypt hash of the password read from stdin (or asked for on a terminal)", passwdFlags, runPasswd},
		{"cert", "rotor cert --host NAME[,IP...]", "write a self-signed certificate and key for --https-listen, and print how to use them", certFlags, runCert},
		{"version", "rotor version", "print the version, VCS revision and Go version", noFlags("version"), runVersion},
		{"help", "rotor help [COMMAND]", "show this help, or a command's", noFlags("help"), runHelp},
	}
}

func noFlags(name string) func() *pflag.FlagSet {
	return func() *pflag.FlagSet { return pflag.NewFlagSet("rotor "+name, pflag.ContinueOnError) }
}

func lookupCommand(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func commandNames() string {
	var names []string
	for _, c := range commands() {
		names = append(names, c.name)
	}
	return strings.Join(names, ", ")
}

// exec parses the command's flags and runs it, returning the exit status:
// 0, 1 for a failure, 2 for a usage or configuration error.
func (c command) exec(ctx context.Context, std stdio, args []string) int {
	fs := c.flags()
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			c.help(std.stdout, fs)
			return 0
		}
		fmt.Fprintf(std.stderr, "rotor %s: %v\n", c.name, flagError(fs, err, "rotor "+c.name+" --help"))
		return 2
	}
	if err := c.run(ctx, std, fs); err != nil {
		fmt.Fprintf(std.stderr, "rotor %s: %v\n", c.name, err)
		if errors.Is(err, errConfig) {
			return 2
		}
		return 1
	}
	return 0
}

// help writes the command's usage line, summary and flags.
func (c command) help(w io.Writer, fs *pflag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s\n\n%s.\n", c.usage, strings.ToUpper(c.summary[:1])+c.summary[1:])
	if fs.HasFlags() {
		fmt.Fprintf(w, "\nFlags:\n%s", fs.FlagUsages())
	}
}

// errUsage is a command given arguments it does not take.
var errUsage = errors.New("usage")

func wantNoArgs(fs *pflag.FlagSet, usage string) error {
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: %w: %s takes no arguments", errConfig, errUsage, usage)
	}
	return nil
}

func runDemo(ctx context.Context, std stdio, fs *pflag.FlagSet) error {
	if err := wantNoArgs(fs, "rotor demo"); err != nil {
		return err
	}
	return demo(ctx, std.stdout)
}

func runVersion(_ context.Context, std stdio, fs *pflag.FlagSet) error {
	if err := wantNoArgs(fs, "rotor version"); err != nil {
		return err
	}
	_, err := fmt.Fprintln(std.stdout, versionLine())
	return err
}

func runHelp(_ context.Context, std stdio, fs *pflag.FlagSet) error {
	switch fs.NArg() {
	case 0:
		usage(std.stdout)
		return nil
	case 1:
		c, ok := lookupCommand(fs.Arg(0))
		if !ok {
			return fmt.Errorf("%w: unknown command %q; commands: %s", errConfig, fs.Arg(0), commandNames())
		}
		c.help(std.stdout, c.flags())
		return nil
	}
	return fmt.Errorf("%w: %w: rotor help [COMMAND]", errConfig, errUsage)
}

// flagError adds to a pflag error the flag the user probably meant, and
// where to see them all.
func flagError(fs *pflag.FlagSet, err error, helpCmd string) error {
	ne, ok := errors.AsType[*pflag.NotExistError](err)
	if !ok {
		return err
	}
	if ne.GetSpecifiedShortnames() != "" {
		return fmt.Errorf("%w (%s lists the flags)", err, helpCmd)
	}
	name := ne.GetSpecifiedName()
	if near := nearestFlag(fs, name); near != "" {
		return fmt.Errorf("unknown flag --%s; did you mean --%s? (%s lists the flags)", name, near, helpCmd)
	}
	return fmt.Errorf("unknown flag --%s (%s lists the flags)", name, helpCmd)
}

// nearestFlag is the flag of fs closest to name by edit distance, if one
// is close enough to be a typo: at most 2 edits, and fewer than a third
// of the name.
func nearestFlag(fs *pflag.FlagSet, name string) string {
	best, bestD := "", 3
	fs.VisitAll(func(f *pflag.Flag) {
		if d := editDistance(name, f.Name); d < bestD && d*3 <= max(len(name), 3) {
			best, bestD = f.Name, d
		}
	})
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

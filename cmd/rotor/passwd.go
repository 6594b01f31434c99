package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"

	"github.com/rotor-proxy/rotor/auth"
)

func passwdFlags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("rotor passwd", pflag.ContinueOnError)
	fs.Int("cost", bcrypt.DefaultCost, fmt.Sprintf("bcrypt cost (%d-%d): each step doubles the time a check takes", bcrypt.MinCost, auth.MaxBcryptCost))
	return fs
}

func runPasswd(_ context.Context, std stdio, fs *pflag.FlagSet) error {
	return passwd(fs, std.stdin, std.stdout, std.stderr)
}

// passwd prints a users-file line for NAME with a bcrypt hash of a
// password read from the terminal (asked twice, not echoed) or, when
// stdin is not a terminal, from its first line. Never from the command
// line, where ps and shell history would show it.
//
//	rotor passwd alice >> /etc/rotor/users
//	printf '%s\n' "$PASS" | rotor passwd alice
func passwd(fs *pflag.FlagSet, stdin *os.File, stdout, stderr io.Writer) error {
	cost, _ := fs.GetInt("cost")
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: usage: rotor passwd [--cost N] NAME  (the password is read from stdin)", errConfig)
	}
	name := fs.Arg(0)
	if err := auth.ValidName(name); err != nil {
		return fmt.Errorf("%w: %w", errConfig, err)
	}
	if cost < bcrypt.MinCost || cost > auth.MaxBcryptCost {
		return fmt.Errorf("%w: --cost %d: want %d to %d", errConfig, cost, bcrypt.MinCost, auth.MaxBcryptCost)
	}
	var pass []byte
	if fd := int(stdin.Fd()); term.IsTerminal(fd) {
		fmt.Fprintf(stderr, "password for %s: ", name)
		p1, err := term.ReadPassword(fd)
		fmt.Fprintln(stderr)
		if err != nil {
			return err
		}
		fmt.Fprint(stderr, "again: ")
		p2, err := term.ReadPassword(fd)
		fmt.Fprintln(stderr)
		if err != nil {
			return err
		}
		if string(p1) != string(p2) {
			return errors.New("the passwords differ")
		}
		pass = p1
	} else {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		pass = []byte(strings.TrimRight(line, "\r\n"))
	}
	if len(pass) == 0 {
		return fmt.Errorf("%w: empty password", errConfig)
	}
	if len(pass) > 72 {
		return fmt.Errorf("%w: bcrypt uses at most 72 bytes of a password; this one has %d", errConfig, len(pass))
	}
	h, err := bcrypt.GenerateFromPassword(pass, cost)
	clear(pass)
	if err != nil {
		return err
	}
	// $2y$ is what htpasswd -B writes; the algorithm is the same.
	_, err = fmt.Fprintf(stdout, "%s:%s\n", name, strings.Replace(string(h), "$2a$", "$2y$", 1))
	return err
}

// Command rotor is an HTTP and SOCKS5 proxy that sends every request,
// tunnel and SOCKS connection from the next address of a pool of local
// source IPs.
//
//	rotor --pool 203.0.113.7,203.0.113.8     serve
//	rotor demo                                see it work on loopback
//	rotor check --pool ... --url URL          what does the remote see from each address?
//	rotor passwd NAME                         a users-file line (password from stdin)
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/pflag"

	"github.com/rotor-proxy/rotor/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// run is main without the process: it returns the exit status, 0, 1 for
// a failure, or 2 for a usage or configuration error (which systemd does
// not restart: RestartPreventExitStatus=2).
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		c, ok := lookupCommand(args[0])
		if !ok {
			fmt.Fprintf(stderr, "rotor: unknown command %q; commands: %s (rotor help)\n", args[0], commandNames())
			return 2
		}
		return c.exec(ctx, stdio{stdin: os.Stdin, stdout: stdout, stderr: stderr, getenv: getenv}, args[1:])
	}
	return runProxy(ctx, args, stdout, stderr, getenv)
}

// runProxy runs the proxy until ctx ends or a listener fails.
func runProxy(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	cfg, err := config.Parse(args, getenv)
	if errors.Is(err, pflag.ErrHelp) {
		usage(stdout)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "rotor: %v\n", flagError(config.NewFlagSet("rotor"), err, "rotor --help"))
		return 2
	}
	if cfg.ShowVersion {
		fmt.Fprintln(stdout, versionLine())
		return 0
	}
	log := newLogger(cfg, stderr)
	in, err := start(cfg, log, nil)
	if err != nil {
		fmt.Fprintf(stderr, "rotor: %v\n", err)
		if errors.Is(err, errConfig) {
			return 2
		}
		return 1
	}
	if cfg.DebugListen != "" {
		addr, err := startDebug(cfg.DebugListen, in.hits)
		if err != nil {
			fmt.Fprintf(stderr, "rotor: debug listener: %v\n", err)
			return 1
		}
		log.Info().Stringer("addr", addr).Msg("serving /debug/pprof/")
	}
	if in.metricsLn != nil {
		log.Info().Stringer("addr", in.metricsLn.Addr()).Msg("serving /metrics, /healthz and /readyz")
	}
	ev := log.Info().Str("version", versionLine()).Strs("pool", labels(in.dialer.Pool())).Str("strategy", string(cfg.Strategy)).
		Int("users", len(cfg.Users)).Int("allow_clients", len(cfg.AllowClients)).Int64("max_conns", cfg.MaxConns).
		Str("health_target", cfg.HealthTarget).Stringer("health_interval", cfg.HealthInterval)
	if in.httpAddr != nil {
		ev = ev.Stringer("http", in.httpAddr)
	}
	if in.socksAddr != nil {
		ev = ev.Stringer("socks5", in.socksAddr)
	}
	if in.httpsAddr != nil {
		ev = ev.Stringer("https", in.httpsAddr)
	}
	if in.mixedAddr != nil {
		ev = ev.Stringer("mixed", in.mixedAddr).Bool("mixed_tls", in.certs != nil)
	}
	ev.Msg("rotor started")

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	code := 0
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-hup:
			if err := in.reload(); err != nil {
				log.Error().Err(err).Msg("reload failed; the previous configuration stays")
			}
		case err := <-in.serveErr:
			log.Error().Err(err).Msg("listener failed")
			code = 1
			break wait
		}
	}
	in.stopAccepting()
	log.Info().Stringer("timeout", cfg.ShutdownTimeout).Msg("shutting down: listeners closed, draining")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := in.shutdown(sctx); err != nil {
		log.Warn().Err(err).Msg("drain timed out; closed remaining connections")
	}
	log.Info().Msg("rotor stopped")
	return code
}

func newLogger(cfg config.Config, w io.Writer) zerolog.Logger {
	if cfg.LogFormat == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	}
	return zerolog.New(w).Level(cfg.LogLevel).With().Timestamp().Logger()
}

func usage(w io.Writer) {
	fmt.Fprint(w, `rotor: HTTP and SOCKS5 proxy that rotates outbound source addresses (Linux).

Usage:
  rotor --pool IP[,IP...] [flags]   serve; flags override environment variables, and
                                    kill -HUP re-reads --pool-file and --users-file
  rotor COMMAND [flags]             where COMMAND is one of the commands below

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s  %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "\nrotor help COMMAND (or rotor COMMAND --help) shows its usage and flags.\n")
	config.Usage(w)
}

package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/spf13/pflag"

	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/dest"
	"github.com/rotor-proxy/rotor/pool"
)

func checkFlags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("rotor check", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.String("pool", "", "comma-separated local source IPs, blocks and upstream proxies (env IP_POOL)")
	fs.String("url", "", "http:// or https:// URL whose body is the caller's address, e.g. https://api.ipify.org")
	fs.Duration("timeout", 10*time.Second, "bound on each fetch")
	fs.String("allow-dest", "", "CIDRs the destination policy should allow (env ALLOW_DEST)")
	fs.Bool("insecure", false, "do not verify the TLS certificate")
	return fs
}

func runCheck(ctx context.Context, std stdio, fs *pflag.FlagSet) error {
	return check(ctx, fs, std.getenv, std.stdout, nil)
}

// check fetches a URL once from every pool entry (through it, for an
// upstream proxy) and prints what the remote saw: the first thing to run
// when "IPs are not rotating". It returns an error (exit 1) if any entry
// fails.
//
//	rotor check --pool 203.0.113.10,203.0.113.11 --url https://api.ipify.org
func check(ctx context.Context, fs *pflag.FlagSet, getenv func(string) string, out io.Writer, resolver *net.Resolver) error {
	if err := wantNoArgs(fs, "rotor check"); err != nil {
		return err
	}
	poolFlag, _ := fs.GetString("pool")
	rawURL, _ := fs.GetString("url")
	timeout, _ := fs.GetDuration("timeout")
	allow, _ := fs.GetString("allow-dest")
	insecure, _ := fs.GetBool("insecure")
	if poolFlag == "" && getenv != nil {
		poolFlag = getenv("IP_POOL")
	}
	if allow == "" && getenv != nil {
		allow = getenv("ALLOW_DEST")
	}
	addrs, ups, err := config.ParseEntries(poolFlag)
	if err != nil {
		return fmt.Errorf("%w: %w", errConfig, err)
	}
	allowDest, err := config.ParsePrefixes(allow)
	if err != nil {
		return fmt.Errorf("%w: %w", errConfig, err)
	}
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: --url %q: want an http:// or https:// URL", errConfig, rawURL)
	}
	p, err := pool.NewEntries(addrs, ups, pool.RoundRobin)
	if err != nil {
		return fmt.Errorf("%w: %w", errConfig, err)
	}
	// The same policy as the server's, the host's own addresses included.
	policy := dest.NewPolicy(allowDest, nil)
	if err := policy.LoadHostAddrs(); err != nil {
		return err
	}
	d := pool.NewDialer(p, pool.DialerOptions{Timeout: timeout, Resolver: resolver, Policy: policy})

	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tREMOTE SAW\tLATENCY\tERROR")
	failed := 0
	for _, src := range p.Sources() {
		saw, took, err := fetchFrom(ctx, d, src, u, timeout, insecure)
		errText := ""
		switch addrs := bodyAddrs(saw); {
		case err != nil:
			errText = err.Error()
		case len(addrs) == 0:
			errText = "the body is not an IP address: use a URL that answers with the caller's address, e.g. https://api.ipify.org"
		case src.Up == nil && !sawSource(addrs, src):
			// (Through an upstream entry the remote sees the upstream's
			// address, which rotor cannot know: what it saw is the answer.)
			errText = "remote saw another address: NAT or a proxy between rotor and it?"
		}
		if errText != "" {
			failed++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", src.Label, printable(saw, 40), took.Round(time.Millisecond), errText)
	}
	tw.Flush()
	if failed > 0 {
		return fmt.Errorf("%d of %d addresses failed", failed, len(p.Sources()))
	}
	return nil
}

// printable is what a remote sent, safe for a terminal (no control
// bytes) and at most n bytes long.
func printable(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsGraphic(r) {
			return r
		}
		return '?'
	}, s)
	if len(s) > n {
		s = s[:n-3] + "..."
	}
	return s
}

// bodyAddrs returns the IP addresses in the first line of a body, which
// may be the address alone or words and JSON around it.
func bodyAddrs(saw string) []netip.Addr {
	var out []netip.Addr
	for _, f := range strings.FieldsFunc(saw, func(r rune) bool { return strings.ContainsRune(" \t\",{}=;", r) }) {
		if a, err := netip.ParseAddr(f); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// sawSource reports whether the remote's answer names src: the address,
// or for a block an address inside it.
func sawSource(addrs []netip.Addr, src *pool.Source) bool {
	for _, a := range addrs {
		if src.Prefix.Contains(a) {
			return true
		}
	}
	return false
}

// fetchFrom GETs u from src on a fresh connection and returns the first
// line of the body.
func fetchFrom(ctx context.Context, d *pool.Dialer, src *pool.Source, u *url.URL, timeout time.Duration, insecure bool) (string, time.Duration, error) {
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, port, err := pool.SplitTarget(addr)
			if err != nil {
				return nil, err
			}
			c, err := d.OpenTCP(ctx, pool.Egress{Src: src, Local: src.Local()}, host, port)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: insecure},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("User-Agent", "rotor-check")
	start := time.Now()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return "", time.Since(start), err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	took := time.Since(start)
	if err != nil {
		return "", took, err
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
	if resp.StatusCode != http.StatusOK {
		return line, took, errors.New(resp.Status)
	}
	return line, took, nil
}

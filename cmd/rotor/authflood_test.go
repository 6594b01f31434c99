package main

import (
	"bufio"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/rotor-proxy/rotor/auth"
	"github.com/rotor-proxy/rotor/config"
	"github.com/rotor-proxy/rotor/serve"
)

// socksLogin offers only username/password from local and returns the
// RFC 1929 status, how long the exchange took, and any error.
func socksLogin(sock, local, user, pass string) (byte, time.Duration, error) {
	start := time.Now()
	c, err := dialFrom(local).Dial("tcp", sock)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(socksHelloAs(user, pass)); err != nil {
		return 0, 0, err
	}
	var b [4]byte // greeting reply, auth status
	if _, err := io.ReadFull(bufio.NewReader(c), b[:]); err != nil {
		return 0, 0, err
	}
	return b[3], time.Since(start), nil
}

// A flood of wrong passwords from one address does not starve another
// address's login: 64 concurrent clients from 127.0.0.20 keep sending
// wrong passwords for a bcrypt user, and that user's first login (nothing
// cached) from 127.0.0.21 takes at most 3 times one bcrypt check measured
// here. Without back-off and fair turns it waited for all 64 checks.
// The flood's refusals are logged and counted as auth-backoff.
func TestWrongPasswordFloodDoesNotStarveOthers(t *testing.T) {
	const user, pass = "scraper", "the-right-one"
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), 8)
	if err != nil {
		t.Fatal(err)
	}
	r := startRotor(t, func(c *config.Config) {
		specs, err := auth.ParseUsers(strings.NewReader(user + ":" + string(hash) + "\n"))
		if err != nil {
			t.Fatal(err)
		}
		c.Users = specs
	})
	// One bcrypt check, timed in this process under the same load as the
	// login (the flood, and whatever else the machine runs): the median
	// of five, three just before the login and two just after.
	var checks []time.Duration
	timeChecks := func(n int) {
		for range n {
			start := time.Now()
			_ = bcrypt.CompareHashAndPassword(hash, []byte(pass))
			checks = append(checks, time.Since(start))
		}
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent, refused atomic.Int64
	var first sync.WaitGroup
	first.Add(64)
	for i := range 64 {
		wg.Go(func() {
			for n := 0; n < 200; n++ {
				status, _, err := socksLogin(r.sock, "127.0.0.20", user, "guess")
				if n == 0 {
					first.Done()
				}
				if err != nil {
					t.Errorf("attacker %d: %v", i, err)
					return
				}
				sent.Add(1)
				if status != 0 {
					refused.Add(1)
				} else {
					t.Errorf("attacker %d got in with a wrong password", i)
				}
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
		})
	}
	first.Wait() // every attacker has had an answer at least once
	timeChecks(3)
	status, took, err := socksLogin(r.sock, "127.0.0.21", user, pass)
	timeChecks(2)
	close(stop)
	slices.Sort(checks)
	check := checks[len(checks)/2]
	wg.Wait()
	if err != nil || status != 0 {
		t.Fatalf("good login during the flood: status %d, %v", status, err)
	}
	t.Logf("one bcrypt check %s; good login during a flood of %d wrong passwords: %s", check, sent.Load(), took)
	if took > 3*check {
		t.Errorf("good login took %s during the flood, over 3x one bcrypt check (%s)", took, check)
	}
	r.waitLog(`"limit":"auth-backoff"`)
	if n := r.instance.hits().Load(serve.AuthBackoff); n == 0 {
		t.Error("back-off refusals not counted")
	}
}

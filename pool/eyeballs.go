package pool

import (
	"context"
	"net"
	"time"
)

// fallbackDelay is how long the preferred family has to connect before
// the other family starts too: RFC 8305's recommended 250 ms rounded up,
// as Go's net.Dialer does (300 ms).
const fallbackDelay = 300 * time.Millisecond

type dialResult struct {
	c   net.Conn
	src *Source
	err error
}

// happyEyeballs runs primary, and fallback once primary has failed or
// fallbackDelay has passed; the first connection wins and the other is
// closed. On failure it returns primary's error (and source), the
// preferred family's, unless only the fallback ran to an error.
func happyEyeballs(ctx context.Context, primary, fallback func(context.Context) (net.Conn, *Source, error)) (net.Conn, *Source, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan dialResult, 2)
	start := func(f func(context.Context) (net.Conn, *Source, error)) {
		go func() {
			c, src, err := f(ctx)
			results <- dialResult{c, src, err}
		}()
	}
	start(primary)
	timer := time.NewTimer(fallbackDelay)
	defer timer.Stop()
	running, fellBack := 1, false
	var first *dialResult
	for {
		select {
		case <-timer.C:
			if !fellBack {
				fellBack = true
				running++
				start(fallback)
			}
		case r := <-results:
			running--
			if r.err == nil {
				if running > 0 {
					// The loser is cancelled; close it if it connected
					// anyway. The goroutine ends with that dial.
					go func() {
						if l := <-results; l.c != nil {
							l.c.Close()
						}
					}()
				}
				return r.c, r.src, nil
			}
			if first == nil {
				first = &r
			}
			if !fellBack {
				fellBack = true
				running++
				start(fallback)
				continue
			}
			if running == 0 {
				return nil, first.src, first.err
			}
		}
	}
}

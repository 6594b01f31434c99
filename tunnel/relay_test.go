package tunnel

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/internal/target"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair returns two ends of a loopback TCP connection.
func pair(t *testing.T) (*net.TCPConn, *net.TCPConn) { return target.TCPPair(t) }

// client <-> [proxyClient | Relay | proxyTarget] <-> target
func relayed(t *testing.T, early []byte) (client, target *net.TCPConn, done <-chan Stats) {
	client, proxyClient := pair(t)
	proxyTarget, target := pair(t)
	ch := make(chan Stats, 1)
	go func() {
		st, _ := relayWait(proxyClient, proxyTarget, early, Options{})
		proxyClient.Close()
		proxyTarget.Close()
		ch <- st
	}()
	return client, target, ch
}

func TestRelayHalfCloseBothWays(t *testing.T) {
	client, target, done := relayed(t, []byte("early:"))
	_ = client.SetDeadline(time.Now().Add(10 * time.Second))
	_ = target.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = client.Write([]byte("request"))
	_ = client.CloseWrite()
	got, err := io.ReadAll(target) // ends only if the FIN was propagated
	if err != nil || string(got) != "early:request" {
		t.Fatalf("target read %q, %v", got, err)
	}
	_, _ = target.Write([]byte("reply after client FIN"))
	_ = target.CloseWrite()
	got, err = io.ReadAll(client)
	if err != nil || string(got) != "reply after client FIN" {
		t.Fatalf("client read %q, %v", got, err)
	}
	st := <-done
	if st.Up != int64(len("early:request")) || st.Down != int64(len("reply after client FIN")) {
		t.Fatalf("stats %+v", st)
	}
}

// A reset on one side must end the relay even though the other side
// never closes.
func TestRelayEndsOnReset(t *testing.T) {
	client, target, done := relayed(t, nil)
	_, _ = client.Write([]byte("x"))
	buf := make([]byte, 1)
	_, _ = io.ReadFull(target, buf)
	_ = target.SetLinger(0)
	target.Close() // RST
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("relay still running after the target reset")
	}
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(client); err != nil && !isReset(err) {
		t.Fatalf("client: %v", err)
	}
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

func relayedIdle(t *testing.T, idle time.Duration) (client, target *net.TCPConn, done <-chan error) {
	client, proxyClient := pair(t)
	proxyTarget, target := pair(t)
	ch := make(chan error, 1)
	go func() {
		_, err := relayWait(proxyClient, proxyTarget, nil, Options{Idle: idle})
		proxyClient.Close()
		proxyTarget.Close()
		ch <- err
	}()
	return client, target, ch
}

func TestRelayIdleTimeout(t *testing.T) {
	_, _, done := relayedIdle(t, 200*time.Millisecond)
	select {
	case err := <-done:
		if !errors.Is(err, ErrIdle) {
			t.Fatalf("relay ended with %v, want ErrIdle", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("silent tunnel still open after 5s with a 200ms idle timeout")
	}
}

// Bytes flowing one way keep the tunnel open although the other
// direction is silent for longer than the idle timeout.
func TestRelayOneWayTrafficIsNotIdle(t *testing.T) {
	client, target, done := relayedIdle(t, 300*time.Millisecond)
	go func() {
		for i := 0; i < 12; i++ {
			if _, err := target.Write([]byte("tick")); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		target.CloseWrite()
	}()
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(client)
	if err != nil || len(got) != 48 {
		t.Fatalf("client read %d bytes (%v), want 48 over 1.2s of one-way traffic", len(got), err)
	}
	client.CloseWrite()
	if err := <-done; err != nil {
		t.Fatalf("relay: %v", err)
	}
}

// After parkAfter of silence both directions park without goroutines;
// the tunnel must carry data and half-close as before.
func TestRelayAfterPark(t *testing.T) {
	var p Parker
	defer p.Close()
	client, proxyClient := pair(t)
	proxyTarget, target := pair(t)
	done := make(chan Stats, 1)
	Start(proxyClient, proxyTarget, nil, Options{Parker: &p}, func(st Stats, _ error) {
		proxyClient.Close()
		proxyTarget.Close()
		done <- st
	})
	waitParked(t, &p, 2)
	_ = client.SetDeadline(time.Now().Add(10 * time.Second))
	_ = target.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = client.Write([]byte("after rest"))
	_ = client.CloseWrite()
	got, err := io.ReadAll(target)
	if err != nil || string(got) != "after rest" {
		t.Fatalf("target read %q, %v", got, err)
	}
	_, _ = target.Write([]byte("reply"))
	_ = target.CloseWrite()
	got, err = io.ReadAll(client)
	if err != nil || string(got) != "reply" {
		t.Fatalf("client read %q, %v", got, err)
	}
	if st := <-done; st.Up != 10 || st.Down != 5 {
		t.Fatalf("stats %+v", st)
	}
}

// startParked starts a relay on a parker and waits until both directions
// are parked.
func startParked(t *testing.T, p *Parker, o Options) (client, target *net.TCPConn, tun *Tunnel, done <-chan error) {
	t.Helper()
	client, proxyClient := pair(t)
	proxyTarget, target := pair(t)
	ch := make(chan error, 1)
	o.Parker = p
	tun = Start(proxyClient, proxyTarget, nil, o, func(_ Stats, err error) {
		proxyClient.Close()
		proxyTarget.Close()
		ch <- err
	})
	waitParked(t, p, 2)
	return client, target, tun, ch
}

// waitParked waits up to 5 s for n directions to be parked in p.
func waitParked(t *testing.T, p *Parker, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		got := len(p.parked)
		p.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d directions parked after 5s", got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestParkedIdleTimeout(t *testing.T) {
	var p Parker
	defer p.Close()
	_, _, _, done := startParked(t, &p, Options{Idle: parkAfter + 200*time.Millisecond})
	select {
	case err := <-done:
		if !errors.Is(err, ErrIdle) {
			t.Fatalf("ended with %v, want ErrIdle", err)
		}
	case <-time.After(parkAfter + 3*sweepEvery):
		t.Fatal("parked tunnel outlived its idle timeout")
	}
}

func TestParkedClose(t *testing.T) {
	var p Parker
	defer p.Close()
	client, _, tun, done := startParked(t, &p, Options{})
	tun.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close of a parked tunnel did not end it")
	}
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatal("client connection still open after Close")
	}
}

// A FIN arriving on a parked direction resumes it and travels on.
func TestParkedHalfClose(t *testing.T) {
	var p Parker
	defer p.Close()
	client, target, _, done := startParked(t, &p, Options{})
	_ = client.SetDeadline(time.Now().Add(5 * time.Second))
	_ = target.SetDeadline(time.Now().Add(5 * time.Second))
	_ = client.CloseWrite()
	if got, err := io.ReadAll(target); err != nil || len(got) != 0 {
		t.Fatalf("target: %q, %v; want EOF", got, err)
	}
	_, _ = target.Write([]byte("late reply"))
	_ = target.CloseWrite()
	if got, err := io.ReadAll(client); err != nil || string(got) != "late reply" {
		t.Fatalf("client: %q, %v", got, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// relayWait is Start that waits for the end and returns what it moved.
func relayWait(client, target net.Conn, early []byte, o Options) (Stats, error) {
	type result struct {
		st  Stats
		err error
	}
	ch := make(chan result, 1)
	Start(client, target, early, o, func(st Stats, err error) { ch <- result{st, err} })
	r := <-ch
	return r.st, r.err
}

package serve

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/internal/target"
	"go.uber.org/goleak"
)

// pair returns two ends of a loopback TCP connection.
func pair(t *testing.T) (*net.TCPConn, *net.TCPConn) { return target.TCPPair(t) }

func TestTrackerDrain(t *testing.T) {
	var tr Tracker
	a, b := pair(t)
	tr.Add(a)
	go func() {
		time.Sleep(50 * time.Millisecond)
		tr.Remove(a)
	}()
	if err := tr.Drain(context.Background()); err != nil {
		t.Fatalf("drain: %v", err)
	}
	if tr.Add(b) == nil {
		t.Fatal("Add after Drain accepted a connection")
	}
	// Drain with a deadline closes what is left.
	var tr2 Tracker
	c, d := pair(t)
	tr2.Add(c)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := tr2.Drain(ctx); err == nil {
		t.Fatal("drain with a live conn returned nil")
	}
	_ = d.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := d.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("peer read %v, want EOF after forced close", err)
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

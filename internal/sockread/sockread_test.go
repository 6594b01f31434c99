package sockread

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/rotor-proxy/rotor/internal/target"
)

// The head is read to its delimiter and no further, however the peer
// splits it (one byte at a time, the delimiter across writes, "\r" runs
// before it); what follows stays in the socket.
func TestThrough(t *testing.T) {
	for _, chunks := range [][]string{
		{"HTTP/1.1 200 OK\r\n\r\nafter"},
		{"HTTP/1.1 200 OK\r", "\n\r", "\nafter"},
		{"H", "T", "TP/1.1 200 OK\r\nX: \r\r\n", "\r\n", "after"},
	} {
		a, b := target.TCPPair(t)
		go func() {
			for _, c := range chunks {
				_, _ = a.Write([]byte(c))
				time.Sleep(5 * time.Millisecond)
			}
		}()
		_ = b.SetDeadline(time.Now().Add(5 * time.Second))
		head, err := Through(b, "\r\n\r\n", 1024)
		want := strings.Join(chunks, "")
		want = want[:strings.Index(want, "\r\n\r\n")+4]
		if err != nil || string(head) != want {
			t.Fatalf("%q: head %q, %v; want %q", chunks, head, err, want)
		}
		rest := make([]byte, 5)
		if _, err := io.ReadFull(b, rest); err != nil || string(rest) != "after" {
			t.Fatalf("%q: after the head %q, %v", chunks, rest, err)
		}
	}
}

// A peer that never sends the delimiter is cut at the bound; one that
// closes mid-head, or stalls, is an error.
func TestThroughHostile(t *testing.T) {
	a, b := target.TCPPair(t)
	go func() { _, _ = a.Write([]byte(strings.Repeat("x", 5000))) }()
	_ = b.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := Through(b, "\r\n", 1000); !errors.Is(err, ErrTooLong) {
		t.Errorf("endless line: %v, want ErrTooLong", err)
	}

	a, b = target.TCPPair(t)
	_, _ = a.Write([]byte("HTTP/1.1 200"))
	a.Close()
	_ = b.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := Through(b, "\r\n", 1000); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("closed mid-head: %v, want unexpected EOF", err)
	}

	_, b = target.TCPPair(t)
	_ = b.SetDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := Through(b, "\r\n", 1000); err == nil {
		t.Error("a silent peer: no error at the deadline")
	}
}

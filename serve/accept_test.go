package serve

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// A handler that panics loses its connection, not the server: the next
// connection is served.
func TestAcceptorRecoversPanics(t *testing.T) {
	var a Acceptor
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	done := make(chan error, 1)
	var panicked atomic.Bool
	go func() {
		done <- a.Serve(ln, zerolog.Nop(), func(c net.Conn) {
			if panicked.CompareAndSwap(false, true) {
				panic("bad input")
			}
			_, _ = c.Write([]byte("ok"))
			c.Close()
			close(served)
		})
	}()
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c)
		c.Close()
		if i == 1 && string(got) != "ok" {
			t.Fatalf("second connection got %q, want ok", got)
		}
	}
	<-served
	a.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	a.Wait()
}

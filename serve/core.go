package serve

import (
	"context"
	"net"

	"github.com/rs/zerolog"

	"github.com/rotor-proxy/rotor/tunnel"
)

// Core is what both proxy servers are built on: the accept loop, the live
// connections a shutdown drains, the parker that holds idle tunnels
// without goroutines, and the context that cancels dials at a forced
// close. A server embeds it, calls Init from its constructor, and adds its
// own clean-up to Shutdown.
type Core struct {
	Acc    Acceptor
	Conns  Tracker
	Parker tunnel.Parker
	// Ctx ends when the server is forced closed: dials and handshakes
	// under it stop.
	Ctx    context.Context
	cancel context.CancelFunc
	// Proxy, when set, reads the PROXY protocol header of connections
	// from trusted balancers before they are handled (see ProxyProto).
	Proxy *ProxyProto
}

// Init readies c: client connections count against limit (nil: none) and
// refusals are counted in hits (nil: not counted).
func (c *Core) Init(limit *Limiter, hits *Hits) {
	c.Ctx, c.cancel = context.WithCancel(context.Background())
	c.Conns.Limit = limit
	c.Conns.Hits = hits
}

// Serve accepts connections on ln and hands each to handle until Shutdown.
// It returns nil after Shutdown, or the listener's error.
func (c *Core) Serve(ln net.Listener, log zerolog.Logger, handle func(net.Conn)) error {
	if c.Proxy != nil && len(c.Proxy.From) > 0 {
		inner := handle
		handle = func(conn net.Conn) {
			w, err := c.Proxy.Wrap(conn)
			if err != nil {
				conn.Close()
				log.Warn().Err(err).Msg("connection from a trusted balancer refused: no valid PROXY protocol header")
				return
			}
			inner(w)
		}
	}
	return c.Acc.Serve(ln, log, handle)
}

// Shutdown stops accepting at once, lets live connections finish until
// ctx ends, then closes the rest, cancels Ctx, runs stop (the server's
// own clean-up; nil for none) and waits for every goroutine.
func (c *Core) Shutdown(ctx context.Context, stop func()) error {
	c.Acc.Close()
	err := c.Conns.Drain(ctx)
	c.cancel()
	c.Acc.Wait()
	if stop != nil {
		stop()
	}
	c.Parker.Close()
	return err
}

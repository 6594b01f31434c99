package pool

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrAddressRemoved is why a source left rotation when its address was
// removed from the host.
var ErrAddressRemoved = errors.New("address removed from the host")

// WatchAddresses follows the kernel's address events over netlink
// (RTM_NEWADDR, RTM_DELADDR, IPv4 and IPv6) until ctx ends. A source whose
// address is removed from the host leaves rotation at once, without
// waiting for a request to fail or a probe round, and its OnChange runs
// (the HTTP proxy closes its idle upstream connections, whose replies can
// no longer arrive); it comes back when the address is added again. An
// address that left rotation for another reason is left to the health
// checker. The policy's set of the host's own addresses is re-read on
// every event, so an address added to any interface is refused as a
// destination at once.
func (d *Dialer) WatchAddresses(ctx context.Context) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("netlink bind: %w", err)
	}
	// A non-blocking descriptor in an os.File uses the runtime poller, so
	// closing it ends a blocked Read.
	f := os.NewFile(uintptr(fd), "netlink")
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	// Subscribed first, read second: no change between the two is missed.
	if err := d.policy.LoadHostAddrs(); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, unix.ENOBUFS) {
				// Events were lost: the host's addresses are read
				// again, and the health checker still runs.
				_ = d.policy.LoadHostAddrs()
				continue
			}
			f.Close()
			return fmt.Errorf("netlink read: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		changed := false
		for i := range msgs {
			if t := msgs[i].Header.Type; t == unix.RTM_NEWADDR || t == unix.RTM_DELADDR {
				changed = true
				for _, a := range eventAddrs(&msgs[i]) {
					d.addressChanged(a, t == unix.RTM_NEWADDR)
				}
			}
		}
		if changed {
			_ = d.policy.LoadHostAddrs()
		}
	}
}

// eventAddrs returns the addresses an RTM_NEWADDR or RTM_DELADDR names.
func eventAddrs(m *syscall.NetlinkMessage) []netip.Addr {
	attrs, err := syscall.ParseNetlinkRouteAttr(m)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range attrs {
		if a.Attr.Type != unix.IFA_LOCAL && a.Attr.Type != unix.IFA_ADDRESS {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.Value); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// addressChanged takes the source with address a out of rotation when a
// was removed, and brings it back when a removed one is added again.
func (d *Dialer) addressChanged(a netip.Addr, added bool) {
	for _, src := range d.Pool().Sources() {
		if src.Block || src.Addr != a {
			continue
		}
		switch {
		case !added:
			src.gone.Store(true)
			d.MarkDown(src, ErrAddressRemoved)
		case src.gone.Swap(false):
			d.MarkUp(src)
		}
	}
}

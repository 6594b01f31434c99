package pool

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"

	"github.com/rotor-proxy/rotor/dest"
	"github.com/rotor-proxy/rotor/serve"
)

// Class sorts dial errors into what a client is told. Both listeners map
// a Class to their own reply (HTTP status, SOCKS5 reply code), so the two
// protocols never disagree about the same failure.
type Class uint8

const (
	ClassOther           Class = iota
	ClassRefused               // target port closed (RST)
	ClassNetUnreachable        // no route to the network
	ClassHostUnreachable       // no route to the host, or ICMP host unreachable
	ClassDNS                   // name does not resolve (in the source's family)
	ClassTimeout               // connect or resolve took longer than the dial timeout
	ClassCanceled              // the client went away first
	ClassBadTarget             // malformed host:port
	ClassNoSource              // no pool address of the target's family
	ClassForbidden             // refused by the destination policy
	ClassRateLimited           // every usable source at its --per-ip-rate
	ClassNoSuchHost            // the name does not exist (NXDOMAIN, in every family)
)

// NumClasses is the number of Class values, for tables indexed by Class.
const NumClasses = int(ClassNoSuchHost) + 1

var classNames = [...]string{"other", "refused", "net-unreachable", "host-unreachable", "dns", "timeout", "canceled", "bad-target", "no-source", "forbidden", "rate-limited", "no-such-host"}

func (c Class) String() string { return classNames[c] }

// Classify inspects err by type, never by message text. It does not
// allocate (errors.AsType, not errors.As), so metrics can classify every
// failure.
func Classify(err error) Class {
	dnsErr, isDNS := errors.AsType[*net.DNSError](err)
	switch {
	case err == nil:
		return ClassOther
	case errors.Is(err, dest.ErrForbidden):
		return ClassForbidden
	case errors.Is(err, ErrRateLimited):
		return ClassRateLimited
	case errors.Is(err, ErrBadTarget):
		return ClassBadTarget
	case errors.Is(err, ErrNoSource):
		return ClassNoSource
	case errors.Is(err, ErrNoSuchHost):
		return ClassNoSuchHost
	case errors.Is(err, ErrNoAddress):
		return ClassDNS
	case errors.Is(err, syscall.ECONNREFUSED):
		return ClassRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return ClassNetUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return ClassHostUnreachable
	case errors.Is(err, context.Canceled):
		return ClassCanceled
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return ClassTimeout
	case isDNS:
		if dnsErr.IsTimeout {
			return ClassTimeout
		}
		return ClassDNS
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return ClassTimeout
	}
	return ClassOther
}

// TimeoutHit says which bound a timed-out dial hit: DNSTimeout when
// resolving the name timed out, DialTimeout otherwise; None for an error
// that is not a timeout.
func TimeoutHit(err error) serve.Hit {
	if Classify(err) != ClassTimeout {
		return serve.None
	}
	if _, ok := errors.AsType[*net.DNSError](err); ok {
		return serve.DNSTimeout
	}
	return serve.DialTimeout
}

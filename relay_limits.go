package quicpipe

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/quic-go/quic-go"
)

// rateLimiter is a token bucket read and refilled lock-free on the
// forwarding path. Races between refills can only err on the side of
// letting a few more tokens through.
type rateLimiter struct {
	last   atomic.Int64 // unix nanoseconds of the last refill
	tokens atomic.Int64
}

// allow takes n tokens at time now from a bucket refilled at rate tokens per
// second up to burst. rate 0 means unlimited.
func (l *rateLimiter) allow(n, now, rate, burst int64) bool {
	if rate <= 0 {
		return true
	}
	last := l.last.Load()
	if now > last && l.last.CompareAndSwap(last, now) {
		elapsed := min(now-last, int64(1e9)) // a full second refills any bucket
		add := elapsed * rate / 1e9
		if last == 0 {
			add = burst
		}
		if t := l.tokens.Add(add); t > burst {
			l.tokens.Store(burst)
		}
	}
	if l.tokens.Add(-n) < 0 {
		l.tokens.Add(n)
		return false
	}
	return true
}

// addrClass is the scope of an address, from most to least local.
type addrClass int

const (
	classLoopback addrClass = iota
	classLinkLocal
	classPrivate
	classPublic
	classInvalid // unspecified, multicast, broadcast
)

var (
	cgnat      = netip.MustParsePrefix("100.64.0.0/10")
	limitedBC  = netip.MustParseAddr("255.255.255.255")
	thisNet    = netip.MustParsePrefix("0.0.0.0/8")
	classNames = [...]string{"loopback", "link-local", "private", "public", "invalid"}
)

func (c addrClass) String() string { return classNames[c] }

func scopeOf(a netip.Addr) addrClass {
	a = a.Unmap()
	switch {
	case !a.IsValid(), a.IsUnspecified(), a.IsMulticast(), a == limitedBC, a.Is4() && thisNet.Contains(a):
		return classInvalid
	case a.IsLoopback():
		return classLoopback
	case a.IsLinkLocalUnicast():
		return classLinkLocal
	case a.IsPrivate(), cgnat.Contains(a):
		return classPrivate
	}
	return classPublic
}

// errTarget is wrapped by the errors of checkTarget.
var errTarget = errors.New("forwarding target refused")

// checkTarget decides whether the relay may forward to target, registered
// over a connection that reached the relay at local. Public targets are
// always allowed; a non-public one only if the relay was reached at an
// address of the same scope (a relay on loopback serves loopback, one on a
// private network serves that network) or allowPrivate is set. Invalid
// addresses and the relay's own address are never allowed.
func checkTarget(target netip.AddrPort, local netip.AddrPort, allowPrivate bool) error {
	tc := scopeOf(target.Addr())
	switch {
	case tc == classInvalid || target.Port() == 0:
		return fmt.Errorf("%w: %s is not a unicast address", errTarget, target)
	case netAddrPort(target) == netAddrPort(local):
		return fmt.Errorf("%w: %s is the relay itself", errTarget, target)
	case tc == classPublic || allowPrivate:
		return nil
	case local.IsValid() && scopeOf(local.Addr()) == tc:
		return nil
	}
	return fmt.Errorf("%w: %s target %s, but the relay serves %s addresses there",
		errTarget, tc, target, scopeOf(local.Addr()))
}

// StatelessResetKeyFromIdentity derives a relay's stateless reset key from
// its identity, so that it stays the same across restarts without being
// configured separately.
func StatelessResetKeyFromIdentity(identity ed25519.PrivateKey) quic.StatelessResetKey {
	var k quic.StatelessResetKey
	h := hmac.New(sha256.New, identity.Seed())
	h.Write([]byte("quicpipe relay stateless reset key v1"))
	copy(k[:], h.Sum(nil))
	return k
}

// sourceOf is the unit in which the relay's per-source limits count: an IPv4
// address, or the /64 that an IPv6 address belongs to (a subscriber's usual
// allocation), so that one host cannot multiply its quota by spreading over
// the addresses of its prefix.
func sourceOf(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

package quicpipe

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe/internal/addrscope"
	"github.com/quicpipe/quicpipe/internal/forward"
)

// sourceLimiter is a token bucket per source: an IPv4 address or an IPv6
// /64 prefix. A bucket that has refilled completely is the same as none, so
// full buckets are swept when the table reaches its bound.
type sourceLimiter struct {
	rate, burst float64
	max         int

	mu      sync.Mutex
	buckets map[netip.Prefix]*forward.TokenBucket
}

// sourceTokenUnit is how many of a sourceLimiter's bucket tokens make one of
// its tokens, so that fractional rates count exactly enough.
const sourceTokenUnit = 1e6

// units returns v tokens in bucket tokens, at least 1.
func (l *sourceLimiter) units(v float64) int64 {
	return int64(min(max(v*sourceTokenUnit, 1), 1<<62))
}

// allow takes a token for the source of ip, or tells how long until one is
// available.
func (l *sourceLimiter) allow(ip netip.Addr, now time.Time) (bool, time.Duration) {
	return l.allowN(sourceOf(ip), 1, now)
}

// allowN takes n tokens for src, or tells how long until n are available.
// n must not exceed the burst.
func (l *sourceLimiter) allowN(src netip.Prefix, n float64, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[src]
	if b == nil {
		if len(l.buckets) >= l.max {
			l.sweep(now)
			if len(l.buckets) >= l.max {
				return false, time.Second
			}
		}
		b = new(forward.TokenBucket)
		l.buckets[src] = b
	}
	rate, burst, need := l.units(l.rate), l.units(l.burst), int64(n*sourceTokenUnit)
	if b.Allow(need, now.UnixNano(), rate, burst) {
		return true, 0
	}
	missing := float64(need - b.Tokens())
	return false, time.Duration(missing / float64(rate) * float64(time.Second))
}

// sweep forgets the buckets that are full again. l.mu must be held.
func (l *sourceLimiter) sweep(now time.Time) {
	rate, burst := l.units(l.rate), l.units(l.burst)
	for src, b := range l.buckets {
		if b.Full(now.UnixNano(), rate, burst) {
			delete(l.buckets, src)
		}
	}
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
	tc := addrscope.Of(target.Addr())
	switch {
	case tc == addrscope.Invalid || target.Port() == 0:
		return fmt.Errorf("%w: %s is not a unicast address", errTarget, target)
	case netAddrPort(target) == netAddrPort(local):
		return fmt.Errorf("%w: %s is the relay itself", errTarget, target)
	case tc == addrscope.Public || allowPrivate:
		return nil
	case local.IsValid() && addrscope.Of(local.Addr()) == tc:
		return nil
	}
	return fmt.Errorf("%w: %s target %s, but the relay serves %s addresses there",
		errTarget, tc, target, addrscope.Of(local.Addr()))
}

// statelessResetKeyFromIdentity derives a relay's stateless reset key from
// its identity, so that it stays the same across restarts without being
// configured separately.
func statelessResetKeyFromIdentity(identity ed25519.PrivateKey) quic.StatelessResetKey {
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
	if forward.IsTunnelAddr(a) { // all tunnels of one source (relay_tunnel.go)
		p, _ := a.Prefix(96)
		return p
	}
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

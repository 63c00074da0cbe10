package quicpipe

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// tokenBucket is a token bucket, read and refilled lock-free (the
// forwarding path takes from its buckets without locks). Its tokens are in
// whatever unit the caller picks: packets, bytes, millionths of a request.
// Races between refills can only err on the side of letting a few more
// tokens through.
type tokenBucket struct {
	last   atomic.Int64 // unix nanoseconds of the last refill; 0: never refilled
	tokens atomic.Int64
}

// allow takes n tokens at time now (unix nanoseconds) from a bucket refilled
// at rate tokens per second up to burst; a new bucket starts full. rate 0
// (or negative) means unlimited.
func (b *tokenBucket) allow(n, now, rate, burst int64) bool {
	if rate <= 0 {
		return true
	}
	// Refill with the tokens earned since the last refill.
	last := b.last.Load()
	if now > last && b.last.CompareAndSwap(last, now) {
		add := burst
		if last != 0 {
			add = earned(now-last, rate, burst)
		}
		if t := b.tokens.Add(add); t > burst {
			b.tokens.Store(burst)
		}
	}
	if b.tokens.Add(-n) < 0 {
		b.tokens.Add(n)
		return false
	}
	return true
}

// earned returns the tokens that elapsed nanoseconds earn at rate tokens
// per second, at most burst.
func earned(elapsed, rate, burst int64) int64 {
	const second = int64(time.Second)
	if elapsed < second && rate < math.MaxInt64/second {
		return min(elapsed*rate/second, burst)
	}
	hi, lo := bits.Mul64(uint64(elapsed), uint64(rate))
	if hi >= uint64(second) {
		return burst // the quotient would overflow: far more than any burst
	}
	q, _ := bits.Div64(hi, lo, uint64(second))
	return int64(min(q, uint64(burst)))
}

// sourceLimiter is a token bucket per source: an IPv4 address or an IPv6
// /64 prefix. A bucket that has refilled completely is the same as none, so
// full buckets are swept when the table reaches its bound.
type sourceLimiter struct {
	rate, burst float64
	max         int

	mu      sync.Mutex
	buckets map[netip.Prefix]*tokenBucket
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
		b = new(tokenBucket)
		l.buckets[src] = b
	}
	rate, burst, need := l.units(l.rate), l.units(l.burst), int64(n*sourceTokenUnit)
	if b.allow(need, now.UnixNano(), rate, burst) {
		return true, 0
	}
	missing := float64(need - b.tokens.Load())
	return false, time.Duration(missing / float64(rate) * float64(time.Second))
}

// sweep forgets the buckets that are full again. l.mu must be held.
func (l *sourceLimiter) sweep(now time.Time) {
	rate, burst := l.units(l.rate), l.units(l.burst)
	for src, b := range l.buckets {
		if b.tokens.Load()+earned(now.UnixNano()-b.last.Load(), rate, burst) >= burst {
			delete(l.buckets, src)
		}
	}
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
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

package forward

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// TokenBucket is a token bucket, read and refilled lock-free (the
// forwarding path takes from its buckets without locks). Its tokens are in
// whatever unit the caller picks: packets, bytes, millionths of a request.
// Races between refills can only err on the side of letting a few more
// tokens through. The zero value is a bucket never used, full at its first
// Allow.
type TokenBucket struct {
	last   atomic.Int64 // unix nanoseconds of the last refill; 0: never refilled
	tokens atomic.Int64
}

// Allow takes n tokens at time now (unix nanoseconds) from a bucket refilled
// at rate tokens per second up to burst; a new bucket starts full. rate 0
// (or negative) means unlimited.
func (b *TokenBucket) Allow(n, now, rate, burst int64) bool {
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

// Tokens returns the tokens in the bucket as of its last refill.
func (b *TokenBucket) Tokens() int64 { return b.tokens.Load() }

// Full reports whether the bucket, refilled at rate up to burst, would be
// full at time now: then it is the same as a new one.
func (b *TokenBucket) Full(now, rate, burst int64) bool {
	return b.tokens.Load()+earned(now-b.last.Load(), rate, burst) >= burst
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

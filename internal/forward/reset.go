package forward

import "crypto/rand"

// maxResetsPerSecond caps the stateless resets the relay sends.
const maxResetsPerSecond = 1000

// Stateless reset sizes (RFC 9000 section 10.3). A reset is one byte shorter
// than the datagram it answers, so the relay never amplifies.
const (
	// resetTokenLen is the length of the token that ends a reset.
	resetTokenLen = 16
	// minResetLen is the shortest reset: 5 bytes that look like a
	// short-header packet's first bytes, then the token.
	minResetLen = 5 + resetTokenLen
	// maxResetLen caps a reset's length: any length from minResetLen on is
	// valid, and the relay answers long datagrams with no more than this.
	maxResetLen = 43
)

// queueReset queues a stateless reset (RFC 9000 section 10.3) answering
// datagram b, received in slot i, which carries a relay CID of an earlier run.
// The reset is shorter than b, so the relay never amplifies, and peers never
// send resets, so resets cannot loop.
func (r *reader) queueReset(b []byte, i int, now int64) bool {
	c := r.c
	if r.resetter == nil || len(b) < minResetLen+1 || !c.resets.Allow(1, now, maxResetsPerSecond, maxResetsPerSecond) {
		return false
	}
	io := &r.io
	out := io.resetBuf(i)[:min(len(b)-1, maxResetLen)]
	rand.Read(out[:len(out)-resetTokenLen])
	out[0] = 0x40 | out[0]&0x3f // looks like a short-header packet
	r.resetter.Reset()
	r.resetter.Write(b[shortDCIDOffset : shortDCIDOffset+CIDLen])
	copy(out[len(out)-resetTokenLen:], r.resetter.Sum(io.hmacBuf[:0]))
	io.queueTo(out, i)
	return true
}

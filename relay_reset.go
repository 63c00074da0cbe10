package quicpipe

import "crypto/rand"

// maxResetsPerSecond caps the stateless resets the relay sends.
const maxResetsPerSecond = 1000

// queueReset queues a stateless reset (RFC 9000 section 10.3) answering
// datagram b, received in slot i, which carries a relay CID of an earlier run.
// The reset is shorter than b, so the relay never amplifies, and peers never
// send resets, so resets cannot loop.
func (r *Relay) queueReset(b []byte, i int, io *batchIO, now int64) bool {
	if r.resetter == nil || len(b) < 22 || !r.resets.allow(1, now, maxResetsPerSecond, maxResetsPerSecond) {
		return false
	}
	out := io.resetBuf(i)[:min(len(b)-1, 43)]
	rand.Read(out[:len(out)-16])
	out[0] = 0x40 | out[0]&0x3f // looks like a short-header packet
	r.resetter.Reset()
	r.resetter.Write(b[1 : 1+CIDLen])
	copy(out[len(out)-16:], r.resetter.Sum(io.hmacBuf[:0]))
	io.queueTo(out, i)
	return true
}

package forward

import (
	"crypto/rand"

	"github.com/quic-go/quic-go"
)

// CIDLen is the length in bytes of every connection ID the relay forwards
// by, and of its own.
const CIDLen = 12

// RelayCIDGenerator issues the relay's own connection IDs: 12 bytes with the
// high bit of the first byte set, so that they never collide with a peer's
// derived IDs and the relay can recognize its own traffic without a lookup.
// Bytes 1 to 3 carry Epoch, which a relay draws at random when it starts: a
// packet for a relay CID of another epoch belongs to a connection of an
// earlier run, and the relay answers it with a stateless reset at once. The
// other bytes are random.
type RelayCIDGenerator struct {
	Epoch [3]byte
}

var _ quic.ConnectionIDGenerator = RelayCIDGenerator{}

// GenerateConnectionID returns a random relay connection ID.
func (g RelayCIDGenerator) GenerateConnectionID() (quic.ConnectionID, error) {
	var c [CIDLen]byte
	rand.Read(c[:])
	c[0] |= 0x80
	copy(c[1:4], g.Epoch[:])
	return quic.ConnectionIDFromBytes(c[:]), nil
}

// ConnectionIDLen returns CIDLen.
func (RelayCIDGenerator) ConnectionIDLen() int { return CIDLen }

// IsRelayCID reports whether a connection ID is one of a relay's own (its
// first byte has the high bit set).
func IsRelayCID(cid []byte) bool { return len(cid) > 0 && cid[0]&0x80 != 0 }

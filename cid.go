package quicpipe

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"math"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe/internal/forward"
	"golang.org/x/crypto/blake2b"
)

// CIDLen is the length in bytes of every connection ID used on a peer
// connection and by the relay.
const CIDLen = 12

// The forwarding engine reads CIDs of the same length.
var _ [CIDLen - forward.CIDLen]struct{}
var _ [forward.CIDLen - CIDLen]struct{}

// Limits on the length of a CID key, the secret from which a peer derives its
// connection IDs.
const (
	MinCIDKeyLen = 16
	MaxCIDKeyLen = blake2b.Size // 64, the longest key BLAKE2b accepts
)

// ErrCIDKeyLength is returned when a CID key is shorter than MinCIDKeyLen or
// longer than MaxCIDKeyLen.
var ErrCIDKeyLength = fmt.Errorf("quicpipe: CID key must be %d to %d bytes", MinCIDKeyLen, MaxCIDKeyLen)

// errCIDsExhausted is returned once a generator has issued 2^32-1 IDs.
var errCIDsExhausted = errors.New("quicpipe: connection ID counter exhausted")

// CID is a 12-byte connection ID.
type CID [CIDLen]byte

// DeriveCID returns the i-th connection ID of the peer holding key: the first
// 12 bytes of BLAKE2b keyed with key over i as a 4-byte big-endian integer,
// with the high bit of the first byte cleared. i starts at 1; docs/PROTOCOL.md
// has test vectors.
func DeriveCID(key []byte, i uint32) (CID, error) {
	var c CID
	if len(key) < MinCIDKeyLen || len(key) > MaxCIDKeyLen {
		return c, ErrCIDKeyLength
	}
	if i == 0 {
		return c, errors.New("quicpipe: connection ID index must be at least 1")
	}
	d, err := newDeriver(key)
	if err != nil {
		return c, err
	}
	d.derive(i, &c)
	return c, nil
}

// deriver computes CIDs for one key. It holds its buffers so that deriving
// many CIDs allocates nothing per CID.
type deriver struct {
	h   hash.Hash
	in  [4]byte
	out []byte
}

func newDeriver(key []byte) (*deriver, error) {
	h, err := blake2b.New(CIDLen, key)
	if err != nil {
		return nil, fmt.Errorf("quicpipe: blake2b: %w", err)
	}
	return &deriver{h: h, out: make([]byte, 0, blake2b.Size)}, nil
}

func (d *deriver) derive(i uint32, c *CID) {
	d.h.Reset()
	binary.BigEndian.PutUint32(d.in[:], i)
	d.h.Write(d.in[:])
	copy(c[:], d.h.Sum(d.out[:0]))
	c[0] &= 0x7f
}

// deriveRange appends the CIDs with indexes first..first+n-1 to dst.
func deriveRange(dst []CID, key []byte, first uint32, n int) ([]CID, error) {
	d, err := newDeriver(key)
	if err != nil {
		return dst, err
	}
	for j := range n {
		var c CID
		d.derive(first+uint32(j), &c)
		dst = append(dst, c)
	}
	return dst, nil
}

// newCIDKey returns a fresh random 32-byte CID key.
func newCIDKey() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

// cidGenerator is a quic.ConnectionIDGenerator that issues a peer's
// connection IDs in order: DeriveCID(key, 1), DeriveCID(key, 2), ...
// It is safe for concurrent use.
type cidGenerator struct {
	mu     sync.Mutex
	d      *deriver
	issued uint32
	notify func(issued uint32)
	// pins holds, for each live connection, the lowest index it may use
	// (see pin and floor).
	pins    map[uint64]uint64
	nextPin uint64
	// linger is how long a connection's pin outlives it (see releaseAfter).
	linger time.Duration
}

var _ quic.ConnectionIDGenerator = (*cidGenerator)(nil)

// newCIDGenerator returns a generator for key, which must be MinCIDKeyLen to
// MaxCIDKeyLen bytes long. Later changes to key do not affect the generator.
func newCIDGenerator(key []byte) (*cidGenerator, error) {
	if len(key) < MinCIDKeyLen || len(key) > MaxCIDKeyLen {
		return nil, ErrCIDKeyLength
	}
	d, err := newDeriver(key)
	if err != nil {
		return nil, err
	}
	return &cidGenerator{d: d}, nil
}

// GenerateConnectionID issues the next connection ID.
func (g *cidGenerator) GenerateConnectionID() (quic.ConnectionID, error) {
	g.mu.Lock()
	if g.issued == math.MaxUint32 {
		g.mu.Unlock()
		return quic.ConnectionID{}, errCIDsExhausted
	}
	g.issued++
	var c CID
	g.d.derive(g.issued, &c)
	i, notify := g.issued, g.notify
	g.mu.Unlock()
	if notify != nil {
		notify(i)
	}
	return quic.ConnectionIDFromBytes(c[:]), nil
}

// ConnectionIDLen returns CIDLen.
func (g *cidGenerator) ConnectionIDLen() int { return CIDLen }

// Issued reports how many connection IDs the generator has issued; the last
// one issued has this index.
func (g *cidGenerator) Issued() uint32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.issued
}

// pin records that a connection is about to be created: it uses no index
// issued before the call. Until unpin is called, floor stays at or below
// that index. unpin may be called more than once.
func (g *cidGenerator) pin() (unpin func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.pins == nil {
		g.pins = make(map[uint64]uint64)
	}
	id := g.nextPin
	g.nextPin++
	g.pins[id] = uint64(g.issued) + 1
	return sync.OnceFunc(func() {
		g.mu.Lock()
		delete(g.pins, id)
		g.mu.Unlock()
	})
}

// releaseAfter calls unpin a while after ctx, a connection's context, is
// done: the connection's CIDs stay registered for that long, so that a peer
// that missed its CONNECTION_CLOSE still reaches it through the relay and
// gets the close again (or a stateless reset) instead of waiting for its
// idle timeout.
func (g *cidGenerator) releaseAfter(ctx context.Context, unpin func()) {
	g.mu.Lock()
	linger := g.linger
	g.mu.Unlock()
	context.AfterFunc(ctx, func() {
		if linger <= 0 {
			unpin()
			return
		}
		time.AfterFunc(linger, unpin)
	})
}

// setLinger sets how long pins outlive their connections (see releaseAfter).
func (g *cidGenerator) setLinger(d time.Duration) {
	g.mu.Lock()
	g.linger = d
	g.mu.Unlock()
}

// floor returns the lowest index a live connection may use: the lowest
// pinned index, or the next index to issue when nothing is pinned. Indexes
// below it belong to connections that are gone (or to connections that
// were never pinned, such as the one to the relay, which the relay does not
// route by CID).
func (g *cidGenerator) floor() uint32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	f := uint64(g.issued) + 1
	for _, p := range g.pins {
		f = min(f, p)
	}
	return uint32(min(f, math.MaxUint32))
}

// setNotify installs a function called (outside the lock) after each issue.
func (g *cidGenerator) setNotify(f func(issued uint32)) {
	g.mu.Lock()
	g.notify = f
	g.mu.Unlock()
}

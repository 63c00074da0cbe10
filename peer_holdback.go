package quicpipe

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"sync/atomic"

	"github.com/quicpipe/quicpipe/internal/wire"
)

// holdBack is the hold-back state of a peer's socket.
type holdBack struct {
	holding atomic.Int32 // number of active holds: the write fast path checks it
	holdMu  sync.Mutex
	holds   map[string]*capture // by original destination CID
}

// capture collects the held-back datagrams of one dial until they hold a
// complete ClientHello, and notes when the dial has heard from the accepter.
type capture struct {
	mu        sync.Mutex
	datagrams [][]byte
	flight    *FirstFlight
	err       error
	done      chan struct{} // closed when flight or err is set

	// scid is the dial's source CID, set from its first held datagram;
	// guarded by peerConn.holdMu.
	scid string
	// answered is set when the dial sends a long-header packet that is
	// not held back: quic-go's client leaves the original destination CID
	// only once it has processed an Initial of the accepter.
	answered atomic.Bool
}

func newCapture() *capture { return &capture{done: make(chan struct{})} }

func (c *capture) add(d []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flight != nil || c.err != nil {
		return // a retransmission: the flight is already out
	}
	c.datagrams = append(c.datagrams, bytes.Clone(d))
	info, err := wire.InspectClientInitials(c.datagrams)
	switch {
	case err == nil && info.Complete:
		c.flight = &FirstFlight{Datagrams: c.datagrams}
		close(c.done)
	case len(c.datagrams) >= MaxFlightDatagrams:
		if err == nil {
			err = errors.New("ClientHello incomplete")
		}
		c.err = badFlight("no complete first flight in %d datagrams: %v", len(c.datagrams), err)
		close(c.done)
	}
}

// hold starts holding back packets for odcid.
func (c *peerConn) hold(odcid []byte, cp *capture) {
	c.holdMu.Lock()
	if _, ok := c.holds[string(odcid)]; !ok {
		c.holding.Add(1)
	}
	c.holds[string(odcid)] = cp
	c.holdMu.Unlock()
}

// release stops holding back packets for odcid.
func (c *peerConn) release(odcid []byte) {
	c.holdMu.Lock()
	if _, ok := c.holds[string(odcid)]; ok {
		delete(c.holds, string(odcid))
		c.holding.Add(-1)
	}
	c.holdMu.Unlock()
}

// captureFor returns the capture a long-header datagram belongs to, and
// whether it is held back: its destination CID is the dial's original one.
// A datagram with the dial's source CID and another destination is a later
// packet of the dial, sent after it heard from the accepter.
func (c *peerConn) captureFor(d []byte) (cp *capture, held bool) {
	if len(d) < 6 || d[0]&0x80 == 0 {
		return nil, false
	}
	dcid, err := wire.DestCID(d)
	if err != nil {
		return nil, false
	}
	scid, ok := longHeaderSCID(d, len(dcid))
	if !ok {
		return nil, false
	}
	c.holdMu.Lock()
	defer c.holdMu.Unlock()
	if cp := c.holds[string(dcid)]; cp != nil {
		if cp.scid == "" {
			cp.scid = string(scid)
		}
		return cp, true
	}
	for _, cp := range c.holds {
		if cp.scid != "" && cp.scid == string(scid) {
			return cp, false
		}
	}
	return nil, false
}

// longHeaderSCID returns the source CID of a long-header packet whose
// destination CID is dcidLen bytes long.
func longHeaderSCID(b []byte, dcidLen int) ([]byte, bool) {
	i := 6 + dcidLen
	if len(b) <= i {
		return nil, false
	}
	n := int(b[i])
	if len(b) < i+1+n {
		return nil, false
	}
	return b[i+1 : i+1+n], true
}

// writeHolding sends while a dial holds back its first flight.
func (c *peerConn) writeHolding(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	// With GSO, b holds several datagrams of segSize bytes (the last may be
	// shorter), all of one connection.
	segSize := gsoSegmentSize(oob)
	if segSize <= 0 || segSize > len(b) {
		segSize = len(b)
	}
	var rest [][]byte
	held := false
	for off := 0; off < len(b); off += segSize {
		d := b[off:min(off+segSize, len(b))]
		cp, h := c.captureFor(d)
		switch {
		case h:
			cp.add(d)
			held = true
		case cp != nil:
			cp.answered.Store(true)
			rest = append(rest, d)
		default:
			rest = append(rest, d)
		}
	}
	if !held {
		return c.writeUnheld(b, oob, addr)
	}
	for _, d := range rest {
		// Rare: a batch that mixes held and other packets. Send the others
		// one by one, without the GSO control message.
		if _, _, err := c.writeUnheld(d, nil, addr); err != nil {
			return 0, 0, err
		}
	}
	return len(b), len(oob), nil
}

// dialHold holds back the packets of one dial from the moment quic-go
// picks its original destination CID until the dial ends.
type dialHold struct {
	pc    *peerConn
	cp    *capture
	odcid []byte // set by start, from quic-go's Tracer callback
}

// start starts holding back the packets for odcid; only the first call
// counts.
func (h *dialHold) start(odcid []byte) {
	if h.odcid == nil {
		h.odcid = odcid
		h.pc.hold(odcid, h.cp)
	}
}

// release stops holding back, if start was called.
func (h *dialHold) release() {
	if h.odcid != nil {
		h.pc.release(h.odcid)
	}
}

package quicpipe

import (
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go/http3"
	"github.com/quicpipe/quicpipe/internal/wire"
	"golang.org/x/net/ipv4"
)

// route forwards the datagrams of one batch that belong to peers and
// compacts the others into the lowest slots of ms. It returns how many are
// left for quic-go.
func (r *Relay) route(ms []ipv4.Message, io *batchIO) int {
	now := time.Now().UnixNano()
	io.grow(len(ms))
	io.keep = io.keep[:0]
	var c batchCounts
	var src srcCheck // consecutive datagrams from one source: one lookup
	for i := range ms {
		b := ms[i].Buffers[0][:ms[i].N]
		src.set(io.srcKey(i))
		v, d := r.classify(b, &src, now)
		switch v {
		case forward:
			io.queue(b, d)
			c.fwdBytes += uint64(len(b))
		case toServer:
			io.keep = append(io.keep, i)
		case resetStale:
			if r.queueReset(b, i, io, now) {
				c.resets++
			} else {
				c.drops[v]++
			}
		default:
			c.drops[v]++
		}
	}
	if len(io.keep) < len(ms) {
		sent, failed := io.flush()
		c.fwd += uint64(max(sent-int(c.resets), 0))
		c.sendErrs += uint64(failed)
	}
	// Forwarded datagrams are on the wire: their buffers may now be
	// overwritten by the ones kept for quic-go.
	for j, i := range io.keep {
		addr := io.addr(i)
		if i != j {
			dst, src := &ms[j], &ms[i]
			dst.N = copy(dst.Buffers[0], src.Buffers[0][:src.N])
			dst.NN = copy(dst.OOB, src.OOB[:src.NN])
			dst.Flags = src.Flags
		}
		ms[j].Addr = addr
	}
	c.toServer = uint64(len(io.keep))
	r.stats.add(&c)
	return len(io.keep)
}

// Offsets in a QUIC packet header (RFC 9000 section 17), for the relay's
// 12-byte CIDs.
const (
	longHeaderBit   = 0x80 // of the first byte: a long header
	shortDCIDOffset = 1    // short header: the DCID follows the first byte
	// Long header: first byte, version (4 bytes), DCID length, DCID, SCID
	// length, SCID.
	longDCIDLenOffset = 5
	longDCIDOffset    = longDCIDLenOffset + 1
	longSCIDLenOffset = longDCIDOffset + CIDLen
	longSCIDOffset    = longSCIDLenOffset + 1
)

// verdict is what the relay does with one datagram.
type verdict uint8

const (
	toServer          verdict = iota // hand to the HTTP/3 server
	forward                          // send to the registered address
	dropUnknown                      // short header, CID not registered
	dropExpired                      // registration lapsed
	dropPeerInitial                  // a peer's first flight sent to the relay
	dropMalformed                    // too short to carry a QUIC header
	dropRateLimited                  // over a forwarding rate
	resetStale                       // a relay CID of an earlier run: send a stateless reset
	dropUnknownSource                // from an address no live registration forwards to
	dropRelaySCID                    // long header with a relay's source CID
	numVerdicts
)

// srcCheck is the forwarding rule's verdict on one source address,
// remembered across the datagrams of a batch that come from it.
type srcCheck struct {
	key   addrKey
	known int8 // 0: not looked up yet; 1: a live registration's target; -1: not
}

// set makes src the source checked, forgetting the verdict if it changed.
func (c *srcCheck) set(src addrKey) {
	if c.key != src {
		*c = srcCheck{key: src}
	}
}

// classify decides what to do with datagram b, received from src, and, for
// forward, returns the destination. It does not allocate on any path a
// forwarded packet takes.
func (r *Relay) classify(b []byte, src *srcCheck, now int64) (verdict, *dest) {
	if len(b) < shortDCIDOffset+CIDLen {
		return dropMalformed, nil
	}
	var cid []byte
	if b[0]&longHeaderBit == 0 {
		cid = b[shortDCIDOffset : shortDCIDOffset+CIDLen]
		if IsRelayCID(cid) {
			if [3]byte(cid[1:4]) != r.epoch {
				return resetStale, nil
			}
			return toServer, nil
		}
	} else {
		if len(b) < longDCIDOffset+CIDLen || b[longDCIDLenOffset] != CIDLen {
			return r.classifyLongUnknown(b, now), nil
		}
		cid = b[longDCIDOffset : longDCIDOffset+CIDLen]
		if IsRelayCID(cid) {
			if [3]byte(cid[1:4]) == r.epoch {
				return toServer, nil
			}
			// A client picks its first DCID at random: one in 26 of
			// quic-go's is 12 bytes with the high bit set and looks like
			// a relay CID of another run. It gets the same first-flight
			// check as any unknown DCID.
			return r.classifyLongUnknown(b, now), nil
		}
	}
	reg := r.table.lookup(cid)
	if reg == nil {
		if b[0]&longHeaderBit == 0 {
			return dropUnknown, nil
		}
		return r.classifyLongUnknown(b, now), nil
	}
	if reg.expires.Load() < now {
		return dropExpired, nil
	}
	// The forwarding rule: only datagrams from an address that a live
	// registration forwards to are forwarded, so that nothing the relay
	// sends can come back to it, from itself or another relay, and be
	// forwarded again (docs/RELAY.md).
	if src.known == 0 {
		src.known = -1
		if r.targets.has(&src.key) {
			src.known = 1
		}
	}
	if src.known < 0 {
		r.wakeFollow(reg, now)
		return dropUnknownSource, nil
	}
	// A relay's Initial, Handshake or Retry (its source CID is a relay
	// CID) is never forwarded: a relay's handshake with a spoofed address
	// must not complete through another relay's (or its own) forwarding.
	if b[0]&longHeaderBit != 0 && len(b) >= longSCIDOffset+CIDLen && b[longSCIDLenOffset] == CIDLen && IsRelayCID(b[longSCIDOffset:]) {
		return dropRelaySCID, nil
	}
	n := int64(len(b))
	if !reg.packets.allow(1, now, r.cfg.MaxPacketsPerSecond, r.cfg.MaxPacketsPerSecond) ||
		!reg.bytes.allow(n, now, r.cfg.MaxBytesPerSecond, r.cfg.MaxBytesPerSecond) ||
		!r.totalPackets.allow(1, now, r.cfg.MaxTotalPacketsPerSecond, r.cfg.MaxTotalPacketsPerSecond) ||
		!r.totalBytes.allow(n, now, r.cfg.MaxTotalBytesPerSecond, r.cfg.MaxTotalBytesPerSecond) {
		return dropRateLimited, nil
	}
	d := reg.dest.Load()
	if r.xdp != nil {
		// With XDP on, a forwarded packet is one the program missed
		// (most likely evicted from its map): put its CID back.
		r.xdpReput(cid, reg, d, now)
	}
	return forward, d
}

// initialFilter remembers the original destination CIDs of Initial packets
// from registered peers that the relay decided to serve, so that the second
// datagram of a two-datagram ClientHello follows the first.
type initialFilter struct {
	mu   sync.Mutex
	seen map[string]int64 // ODCID → expiry (unix nano)
}

const (
	initialFilterMax = 4096
	initialFilterTTL = 10 * time.Second
)

// classifyLongUnknown handles a long-header packet whose DCID is not
// registered: normally a client opening an HTTP/3 connection to the relay.
// A peer's first flight looks the same (its source CID is registered) and
// must never be answered by the relay's server, or the peer would shake hands
// with the relay. A registered peer may also open a new HTTP/3 connection to
// re-register, with the same kind of source CID. The two differ in the ALPN of
// their ClientHello, which the relay reads from the Initial packet (Initial
// protection uses public keys). now is the batch's receive time (unix nano).
func (r *Relay) classifyLongUnknown(b []byte, now int64) verdict {
	hdr, err := wire.ParseLongHeader(b)
	if err != nil || hdr.Type != wire.Initial || len(hdr.SCID) != CIDLen || IsRelayCID(hdr.SCID) {
		return toServer
	}
	if r.table.lookup(hdr.SCID) == nil {
		return toServer
	}
	f := &r.initials
	f.mu.Lock()
	exp, ok := f.seen[string(hdr.DCID)]
	f.mu.Unlock()
	if ok && exp > now {
		return toServer
	}
	info, err := wire.InspectClientInitials([][]byte{b})
	if err != nil || !slices.Contains(info.ALPN, http3.NextProtoH3) {
		return dropPeerInitial
	}
	f.mu.Lock()
	if f.seen == nil {
		f.seen = make(map[string]int64)
	}
	if len(f.seen) >= initialFilterMax {
		for k, e := range f.seen {
			if e <= now {
				delete(f.seen, k)
			}
		}
	}
	if len(f.seen) < initialFilterMax {
		f.seen[string(hdr.DCID)] = now + int64(initialFilterTTL)
	}
	f.mu.Unlock()
	return toServer
}

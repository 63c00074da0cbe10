package forward

import (
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go/http3"
	"github.com/quicpipe/quicpipe/internal/batch"
	"github.com/quicpipe/quicpipe/internal/wire"
	"golang.org/x/net/ipv4"
)

// route forwards the datagrams of one batch that belong to peers and
// compacts the others into the lowest slots of ms. It returns how many are
// left for quic-go.
func (r *reader) route(ms []ipv4.Message) int {
	c := r.c
	now := time.Now().UnixNano()
	io := &r.io
	io.grow(len(ms))
	io.keep = io.keep[:0]
	var n batchCounts
	var src srcCheck // consecutive datagrams from one source: one lookup
	for i := range ms {
		b := ms[i].Buffers[0][:ms[i].N]
		src.set(io.srcKey(i))
		v, d := c.classify(b, &src, now)
		switch v {
		case forward:
			if d.tun != nil {
				if d.tun.enqueue(b) {
					n.fwdTunnel++
					n.fwdBytes += uint64(len(b))
				} else {
					n.drops[dropTunnelFull]++
				}
				continue
			}
			io.queue(b, d)
			n.fwdBytes += uint64(len(b))
		case toServer:
			io.keep = append(io.keep, i)
		case toSleep:
			c.cfg.Sleep(b, src.key.AddrPort())
			n.sleep++
		case resetStale:
			if r.queueReset(b, i, now) {
				n.resets++
			} else {
				n.drops[v]++
			}
		default:
			n.drops[v]++
		}
	}
	if len(io.keep) < len(ms) {
		sent, failed := io.flush()
		n.fwd += uint64(max(sent-int(n.resets), 0)) + n.fwdTunnel
		n.sendErrs += uint64(failed)
	}
	// Forwarded datagrams are on the wire: their buffers may now be
	// overwritten by the ones kept for quic-go.
	for j, i := range io.keep {
		ms[i].Addr = io.addr(i)
		batch.Move(ms, j, i)
	}
	n.toServer = uint64(len(io.keep))
	c.stats.add(&n)
	r.datagrams.Add(uint64(len(ms)))
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
	dropTunnelFull                   // a tunnel's queue, or the server's queue of tunnel datagrams, is full
	toSleep                          // a sleep datagram: hand to Config.Sleep
	numVerdicts
)

// srcCheck is the forwarding rule's verdict on one source address,
// remembered across the datagrams of a batch that come from it.
type srcCheck struct {
	key    AddrKey
	known  int8 // 0: not looked up yet; 1: a live registration's target; -1: not
	tunnel bool // the datagram came through a tunnel, not from the socket
}

// set makes src the source checked, forgetting the verdict if it changed.
func (s *srcCheck) set(src AddrKey) {
	if s.key != src {
		*s = srcCheck{key: src}
	}
}

// classify decides what to do with datagram b, received from src, and, for
// forward, returns the destination. It does not allocate on any path a
// forwarded packet takes.
func (c *Conn) classify(b []byte, src *srcCheck, now int64) (verdict, *Dest) {
	if len(b) < shortDCIDOffset+CIDLen {
		return dropMalformed, nil
	}
	if b[0] == SleepMarker {
		// Never a QUIC v1 packet (the fixed bit is clear). Only from the
		// socket: the relay answers to the address it came from.
		if c.cfg.Sleep == nil || src.tunnel {
			return dropUnknown, nil
		}
		return toSleep, nil
	}
	var cid []byte
	if b[0]&longHeaderBit == 0 {
		cid = b[shortDCIDOffset : shortDCIDOffset+CIDLen]
		if IsRelayCID(cid) {
			if [3]byte(cid[1:4]) != c.epoch {
				return resetStale, nil
			}
			return toServer, nil
		}
	} else {
		if len(b) < longDCIDOffset+CIDLen || b[longDCIDLenOffset] != CIDLen {
			return c.classifyLongUnknown(b, now), nil
		}
		cid = b[longDCIDOffset : longDCIDOffset+CIDLen]
		if IsRelayCID(cid) {
			if [3]byte(cid[1:4]) == c.epoch {
				return toServer, nil
			}
			// A client picks its first DCID at random: one in 26 of
			// quic-go's is 12 bytes with the high bit set and looks like
			// a relay CID of another run. It gets the same first-flight
			// check as any unknown DCID.
			return c.classifyLongUnknown(b, now), nil
		}
	}
	e := c.table.Lookup(cid)
	if e == nil {
		if b[0]&longHeaderBit == 0 {
			return dropUnknown, nil
		}
		return c.classifyLongUnknown(b, now), nil
	}
	if e.expires.Load() < now {
		return dropExpired, nil
	}
	// The forwarding rule: only datagrams from an address that a live
	// registration forwards to are forwarded, so that nothing the relay
	// sends can come back to it, from itself or another relay, and be
	// forwarded again (docs/RELAY.md).
	if src.known == 0 {
		src.known = -1
		if c.targets.Has(&src.key) {
			src.known = 1
		}
	}
	if src.known < 0 {
		c.wakeFollow(e, now)
		return dropUnknownSource, nil
	}
	// A relay's Initial, Handshake or Retry (its source CID is a relay
	// CID) is never forwarded: a relay's handshake with a spoofed address
	// must not complete through another relay's (or its own) forwarding.
	if b[0]&longHeaderBit != 0 && len(b) >= longSCIDOffset+CIDLen && b[longSCIDLenOffset] == CIDLen && IsRelayCID(b[longSCIDOffset:]) {
		return dropRelaySCID, nil
	}
	n := int64(len(b))
	if !e.packets.Allow(1, now, c.cfg.MaxPacketsPerSecond, c.cfg.MaxPacketsPerSecond) ||
		!e.bytes.Allow(n, now, c.cfg.MaxBytesPerSecond, c.cfg.MaxBytesPerSecond) ||
		!c.totalPackets.Allow(1, now, c.cfg.MaxTotalPacketsPerSecond, c.cfg.MaxTotalPacketsPerSecond) ||
		!c.totalBytes.Allow(n, now, c.cfg.MaxTotalBytesPerSecond, c.cfg.MaxTotalBytesPerSecond) {
		return dropRateLimited, nil
	}
	d := e.dest.Load()
	if c.fast != nil && !src.tunnel && d != nil && d.tun == nil {
		// With a fast path on, a forwarded packet is one the program
		// missed (most likely evicted from its map): put its CID back.
		// Never a tunnel's: the kernel cannot write into one, and
		// datagrams from tunnels never pass the program.
		c.reput(cid, e, d, now)
	}
	return forward, d
}

// followWakeEvery bounds how often datagrams from an unknown source make the
// relay check whether one registration's peer moved.
const followWakeEvery = 50_000_000 // 50ms, in nanoseconds

// wakeFollow calls Config.Follow for e, at most once per followWakeEvery:
// a datagram for e's CIDs arrived from an address that no registration
// forwards to, most likely after the peer's NAT rebound.
func (c *Conn) wakeFollow(e *Entry, now int64) {
	last := e.wake.Load()
	if c.cfg.Follow == nil || now-last < followWakeEvery || !e.wake.CompareAndSwap(last, now) {
		return
	}
	c.cfg.Follow(e)
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
func (c *Conn) classifyLongUnknown(b []byte, now int64) verdict {
	hdr, err := wire.ParseLongHeader(b)
	if err != nil || hdr.Type != wire.Initial || len(hdr.SCID) != CIDLen || IsRelayCID(hdr.SCID) {
		return toServer
	}
	if c.table.Lookup(hdr.SCID) == nil {
		return toServer
	}
	f := &c.initials
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

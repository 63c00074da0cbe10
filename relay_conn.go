package quicpipe

import "golang.org/x/net/ipv4"

// relayConn is the relay's socket as quic-go sees it. It implements
// quic.OOBCapablePacketConn and ReadBatch, so quic-go keeps batched reads,
// ECN and GSO, and reads through relayConn.ReadBatch. There, every datagram
// whose destination CID is registered is forwarded at once (one sendmmsg per
// batch on Linux, runs for one destination as UDP GSO messages) and only the
// rest is returned to quic-go's HTTP/3 server.
//
// quic-go pairs messages[i] with its own buffer i, so ReadBatch never
// reorders messages or swaps their buffers: forwarded datagrams are sent
// first, then the datagrams for quic-go are copied down into the lowest slots.
type relayConn struct {
	udpSocket // the socket, owned by the Relay's caller or the Relay; see Relay
	relay     *Relay
	io        batchIO
}

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
	if len(b) < 1+CIDLen {
		return dropMalformed, nil
	}
	var cid []byte
	if b[0]&0x80 == 0 { // short header: the DCID follows the first byte
		cid = b[1 : 1+CIDLen]
		if IsRelayCID(cid) {
			if [3]byte(cid[1:4]) != r.epoch {
				return resetStale, nil
			}
			return toServer, nil
		}
	} else { // long header: version (4 bytes), DCID length, DCID
		if len(b) < 6+CIDLen || b[5] != CIDLen {
			return r.classifyLongUnknown(b, now), nil
		}
		cid = b[6 : 6+CIDLen]
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
		if b[0]&0x80 == 0 {
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
	if b[0]&0x80 != 0 && len(b) >= 7+2*CIDLen && b[6+CIDLen] == CIDLen && IsRelayCID(b[7+CIDLen:]) {
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

func (c *relayConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	for {
		n, err := c.io.read(ms, flags)
		if err != nil {
			return 0, err
		}
		if k := c.relay.route(ms[:n], &c.io); k > 0 {
			return k, nil
		}
	}
}

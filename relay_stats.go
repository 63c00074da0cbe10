package quicpipe

import "sync/atomic"

// relayCounters are the relay's counters. Forwarding adds to them once per
// batch.
type relayCounters struct {
	forwarded, forwardedBytes, toServer, sendErrors atomic.Uint64
	drops                                           [numVerdicts]atomic.Uint64
	handshakes, expired, registered, rebinds        atomic.Uint64
	resets                                          atomic.Uint64
	rejected                                        rejectCounters
}

// rejectCodes are the codes of refused API requests.
var rejectCodes = []string{
	CodeBadMethod, CodeBadJSON, CodeBodyTooLarge, CodeKeyLength, CodeNumRange,
	CodeLimitTotal, CodeLimitSource, CodeLimitCIDs, CodeNotFound, CodeNoAddress, CodeClosing,
	CodeUnauthorized, CodeTarget, CodeLimitSourceCIDs, CodeLimitDerive, CodeConflict, CodeTimeout,
}

type batchCounts struct {
	fwd, fwdBytes, toServer, sendErrs, resets uint64
	drops                                     [numVerdicts]uint64
}

func (c *relayCounters) add(b *batchCounts) {
	if b.fwd > 0 {
		c.forwarded.Add(b.fwd)
		c.forwardedBytes.Add(b.fwdBytes)
	}
	if b.toServer > 0 {
		c.toServer.Add(b.toServer)
	}
	if b.sendErrs > 0 {
		c.sendErrors.Add(b.sendErrs)
	}
	if b.resets > 0 {
		c.resets.Add(b.resets)
	}
	for v, n := range b.drops {
		if n > 0 {
			c.drops[v].Add(n)
		}
	}
}

// RelayStats is a snapshot of a relay's counters.
type RelayStats struct {
	// Forwarded and ForwardedBytes count datagrams sent on to peers.
	Forwarded, ForwardedBytes uint64
	// ToServer counts datagrams handed to the relay's HTTP/3 server.
	ToServer uint64
	// Dropped counts datagrams not forwarded, by reason: "unknown_cid"
	// (short header, CID not registered), "expired" (registration lapsed),
	// "peer_initial" (a peer's first flight sent to the relay), "malformed"
	// (too short for a QUIC header), "rate_limit" (over a registration's or
	// the relay's forwarding rate), "stale_cid" (for a connection of an
	// earlier run of the relay, when no reset could be sent),
	// "unknown_source" (for a registered CID, but from an address that no
	// live registration forwards to: spoofed, another relay, or a peer
	// whose NAT rebound and whose registration has not followed yet),
	// "relay_scid" (a long-header packet whose source CID is a relay's:
	// a relay's handshake is never completed through forwarding) and
	// "send_error" (the kernel refused the forwarded datagram, e.g. a full
	// socket buffer).
	Dropped map[string]uint64
	// Handshakes counts HTTP/3 connections accepted.
	Handshakes uint64
	// Registered counts successful registrations and refreshes; Rejected
	// counts refused API requests by the code of their error answer.
	Registered uint64
	Rejected   map[string]uint64
	// Expired counts registrations removed because they were not refreshed.
	Expired uint64
	// Rebinds counts registrations moved to a peer's new address because
	// its HTTP/3 connection migrated or it refreshed from the new address.
	Rebinds uint64
	// Resets counts stateless resets sent to connections of an earlier run
	// of the relay.
	Resets uint64
	// XDP holds the XDP program's counters by outcome ("forwarded_ipv4",
	// "forwarded_ipv6", and the reasons it passed frames to the stack); nil
	// when the relay has no fast path (RelayConfig.FastPath). Its byte
	// counts include Ethernet and IP headers.
	XDP map[string]FastPathStat
	// Registrations and CIDs are the current table sizes.
	Registrations, CIDs int

	// Conns is the number of HTTP/3 connections, established or in their
	// handshake; Handshaking counts those still in their handshake.
	Conns, Handshaking int
	// ConnsRefused counts connections refused at their first packet, by
	// limit: "limit_source" (MaxConnsPerSource), "limit_total" (MaxConns),
	// "limit_handshakes" (MaxHandshakes).
	ConnsRefused map[string]uint64
	// Retries counts connection attempts asked to prove their address with
	// a Retry (see RetryHandshakes).
	Retries uint64
	// IdleClosed counts connections closed after IdleConnTimeout without a
	// request or a live registration.
	IdleClosed uint64
	// HeaderTimeouts counts requests reset because their headers (or, for
	// the API, their body) did not arrive within RequestHeaderTimeout.
	HeaderTimeouts uint64
}

// Stats returns a snapshot of the relay's counters.
func (r *Relay) Stats() RelayStats {
	c := &r.stats
	s := RelayStats{
		Forwarded:      c.forwarded.Load(),
		ForwardedBytes: c.forwardedBytes.Load(),
		ToServer:       c.toServer.Load(),
		Handshakes:     c.handshakes.Load(),
		Registered:     c.registered.Load(),
		Expired:        c.expired.Load(),
		Rebinds:        c.rebinds.Load(),
		Resets:         c.resets.Load(),
		CIDs:           int(r.table.size.Load()),
		Dropped: map[string]uint64{
			"unknown_cid":    c.drops[dropUnknown].Load(),
			"expired":        c.drops[dropExpired].Load(),
			"peer_initial":   c.drops[dropPeerInitial].Load(),
			"malformed":      c.drops[dropMalformed].Load(),
			"rate_limit":     c.drops[dropRateLimited].Load(),
			"stale_cid":      c.drops[resetStale].Load(),
			"unknown_source": c.drops[dropUnknownSource].Load(),
			"relay_scid":     c.drops[dropRelaySCID].Load(),
			"send_error":     c.sendErrors.Load(),
		},
		Rejected: c.rejected.snapshot(),
	}
	s.Registrations = r.registrations()
	s.Conns, s.Handshaking = r.conns.counts()
	s.ConnsRefused = r.conns.refused.snapshot()
	s.Retries = r.conns.retries.Load()
	s.IdleClosed = r.conns.idleClosed.Load()
	s.HeaderTimeouts = r.conns.headerTimeouts.Load()
	s.XDP = r.xdpStats()
	return s
}

package quicpipe

import "sync/atomic"

// relayCounters are the relay's counters outside the forwarding path (the
// forwarding engine keeps its own: forward.Conn.Counters).
type relayCounters struct {
	handshakes, expired, registered, rebinds atomic.Uint64
	rejected                                 rejectCounters
}

// rejectCodes are the codes of refused API requests.
var rejectCodes = []string{
	CodeBadMethod, CodeBadJSON, CodeBodyTooLarge, CodeKeyLength, CodeNumRange,
	CodeLimitTotal, CodeLimitSource, CodeLimitCIDs, CodeNotFound, CodeNoAddress, CodeClosing,
	CodeUnauthorized, CodeTarget, CodeLimitSourceCIDs, CodeLimitDerive, CodeConflict, CodeTimeout,
	CodeBadKey, CodeSleepRefused, CodeLimitSleepers,
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
	// of the relay or, in a fleet, of another member (their relay CIDs
	// carry another epoch).
	Resets uint64
	// XDP holds the XDP program's counters by outcome ("forwarded_ipv4",
	// "forwarded_ipv6", and the reasons it passed frames to the stack); nil
	// when the relay has no fast path (RelayConfig.FastPath). Its byte
	// counts include Ethernet and IP headers.
	XDP map[string]FastPathStat
	// Registrations and CIDs are the current table sizes.
	Registrations, CIDs int
	// RemoteRegistrations is how many of Registrations other members of a
	// relay fleet hold (see ApplyRemote); 0 without a fleet.
	RemoteRegistrations int

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
	// Sleep counts the relay's sleeping listeners and their datagrams
	// (see SleepStats); all zero if the relay does not offer sleep.
	Sleep SleepStats
}

// Stats returns a snapshot of the relay's counters.
func (r *Relay) Stats() RelayStats {
	c := &r.stats
	f := r.rconn.Counters()
	s := RelayStats{
		Forwarded:      f.Forwarded,
		ForwardedBytes: f.ForwardedBytes,
		ToServer:       f.ToServer,
		Handshakes:     c.handshakes.Load(),
		Registered:     c.registered.Load(),
		Expired:        c.expired.Load(),
		Rebinds:        c.rebinds.Load(),
		Resets:         f.Resets,
		CIDs:           r.table.Len(),
		Dropped: map[string]uint64{
			"unknown_cid":    f.UnknownCID,
			"expired":        f.Expired,
			"peer_initial":   f.PeerInitial,
			"malformed":      f.Malformed,
			"rate_limit":     f.RateLimited,
			"stale_cid":      f.StaleCID,
			"unknown_source": f.UnknownSource,
			"relay_scid":     f.RelaySCID,
			"send_error":     f.SendErrors,
		},
		Rejected: c.rejected.snapshot(),
	}
	s.Registrations = r.registrations()
	s.RemoteRegistrations = r.remoteRegistrations()
	s.Conns, s.Handshaking = r.conns.counts()
	s.ConnsRefused = r.conns.refused.snapshot()
	s.Retries = r.conns.retries.Load()
	s.IdleClosed = r.conns.idleClosed.Load()
	s.HeaderTimeouts = r.conns.headerTimeouts.Load()
	s.XDP = r.xdpStats()
	s.Sleep = r.SleepStats()
	return s
}

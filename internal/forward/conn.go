// Package forward is the relay's forwarding engine: it reads the relay's
// socket in batches, forwards every datagram whose destination CID is
// registered to the registered address, answers packets for relay CIDs of an
// earlier run with stateless resets, drops what must not reach anyone, and
// hands the rest to the relay's HTTP/3 server (quic-go).
//
// The relay keeps its registrations; it tells the engine about them through
// a Table (CID -> *Entry), a Targets set (the addresses datagrams are
// forwarded from) and each Entry's destination and expiry. The engine tells
// the relay about a peer that seems to have moved through Config.Follow, and
// counts what it did (Conn.Counters).
package forward

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"hash"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe/internal/batch"
	"golang.org/x/net/ipv4"
)

// Config configures a Conn.
type Config struct {
	// ResetKey is the key of the stateless resets the relay's quic-go
	// transport sends (quic.Transport.StatelessResetKey); nil: no resets.
	ResetKey *quic.StatelessResetKey
	// MaxPacketsPerSecond and MaxBytesPerSecond cap what one entry
	// forwards; MaxTotalPacketsPerSecond and MaxTotalBytesPerSecond cap
	// all forwarding. Zero or negative: no cap.
	MaxPacketsPerSecond, MaxBytesPerSecond           int64
	MaxTotalPacketsPerSecond, MaxTotalBytesPerSecond int64
	// GRO turns on UDP generic receive offload on the socket where the
	// kernel offers it (Linux, UDP_GRO): one read then returns many
	// datagrams of one sender and one size, which are forwarded as one
	// UDP GSO message when they all go to one destination. Datagrams for
	// quic-go are split and copied into its buffers, one per message, in
	// order. If false, the socket reads one datagram per message.
	GRO bool
	// Follow, if set, is called on the forwarding goroutine when a datagram
	// for e's CIDs arrives from an address that no live registration
	// forwards to (most likely after the peer's NAT rebound), at most once
	// per followWakeEvery per entry. It must not block.
	Follow func(e *Entry)
	// Sleep, if set, is called on the forwarding goroutine with each
	// sleep datagram (first byte SleepMarker) read from the socket, and
	// the address it came from; b is valid only during the call. It must
	// not block. If nil, sleep datagrams are dropped as unknown CIDs.
	Sleep func(b []byte, from netip.AddrPort)
}

// SleepMarker is the first byte of the datagrams of sleeping listeners
// (docs/PROTOCOL.md, "Sleeping listeners"): its two high bits are clear and
// so is QUIC's fixed bit, so it is never a QUIC v1 packet.
const SleepMarker = 0x12

// FastPath is what the forwarding path needs of a kernel fast path (see the
// relay's FastPath): putting a CID the program missed back into its map.
// Its methods must be safe for concurrent use.
type FastPath interface {
	// PutBucket maps cid to dst, sent from src (zero: from the address
	// each packet was sent to), counted against rate bucket bucket.
	PutBucket(cid [CIDLen]byte, dst, src netip.AddrPort, bucket uint32) error
	// Delete removes cid.
	Delete(cid [CIDLen]byte) error
}

// Conn is the relay's socket as quic-go sees it. It implements
// quic.OOBCapablePacketConn and ReadBatch, so quic-go keeps batched reads,
// ECN and GSO, and reads through Conn.ReadBatch. There, every datagram whose
// destination CID is registered is forwarded at once (one sendmmsg per
// batch on Linux, runs for one destination as UDP GSO messages) and only the
// rest is returned to quic-go's HTTP/3 server.
//
// quic-go pairs messages[i] with its own buffer i, so ReadBatch never
// reorders messages or swaps their buffers: forwarded datagrams are sent
// first, then the datagrams for quic-go are moved down into the lowest slots.
type Conn struct {
	batch.Socket // the socket, owned by the caller of NewConn
	reader       // the socket's reader: quic-go's ReadBatch

	table   *Table
	targets *Targets
	cfg     Config

	// epoch marks this run's CIDs (see RelayCIDGenerator). Packets for
	// earlier runs' CIDs get a stateless reset (keyed like quic-go's, by
	// each reader's resetter), at most maxResetsPerSecond.
	epoch  [3]byte
	resets TokenBucket

	// Global forwarding caps, shared by all readers (lock-free buckets).
	totalPackets, totalBytes TokenBucket

	initials initialFilter
	fast     *fastPath // nil unless SetFastPath was called

	tuns tunnels // open tunnels (tunnel.go)

	srv serverQueue // datagrams for quic-go from other readers (readers.go)

	stats counters
}

// NewConn returns the forwarding engine on c, forwarding by table to the
// destinations of its entries, from the sources in targets. The caller keeps
// ownership of c, table and targets; Conn.Close closes c.
func NewConn(c *net.UDPConn, table *Table, targets *Targets, cfg Config) (*Conn, error) {
	fc := &Conn{Socket: batch.NewSocket(c), table: table, targets: targets, cfg: cfg}
	rand.Read(fc.epoch[:])
	fc.srv.init()
	if err := fc.reader.init(fc, c); err != nil {
		return nil, err // the socket's own error; the relay says which socket
	}
	return fc, nil
}

// reader is what one goroutine reading one socket needs of its own: its
// batch buffers and its stateless-reset hash.
type reader struct {
	c        *Conn
	io       batchIO
	resetter hash.Hash // nil: no resets

	// With GRO, or for an extra reader: the engine's own receive
	// buffers, and the datagrams in them kept for quic-go.
	gms  []ipv4.Message
	kept []segRef

	datagrams atomic.Uint64 // read from the socket
}

// Datagrams returns how many datagrams the reader read from its socket
// (those of a GRO read counted one by one).
func (r *reader) Datagrams() uint64 { return r.datagrams.Load() }

func (r *reader) init(c *Conn, sock *net.UDPConn) error {
	r.c = c
	if c.cfg.ResetKey != nil {
		r.resetter = hmac.New(sha256.New, c.cfg.ResetKey[:])
	}
	return r.io.init(sock, c.cfg.GRO)
}

// CIDGenerator returns the generator of the relay's own connection IDs for
// this Conn's run: packets for them go to quic-go, packets for those of
// another run get a stateless reset.
func (c *Conn) CIDGenerator() RelayCIDGenerator { return RelayCIDGenerator{Epoch: c.epoch} }

// SetFastPath makes the forwarding path put the CIDs that fp missed back
// into its map. It must be called before the first CID is inserted into the
// table: the forwarding goroutine reads it only after a table hit, and the
// table's lock orders the two.
func (c *Conn) SetFastPath(fp FastPath) {
	c.fast = &fastPath{fp: fp, reput: make(map[[CIDLen]byte]int64)}
}

// NewDest returns ap as a destination for the socket, or false if the
// socket's family cannot reach it.
func (c *Conn) NewDest(ap netip.AddrPort) (*Dest, bool) {
	if IsTunnelAddr(ap.Addr()) {
		// A virtual address is a destination only while its tunnel is
		// open here.
		t := c.tunnel(KeyOf(ap))
		if t == nil {
			return nil, false
		}
		return t.dest, true
	}
	raw, ok := c.io.encode(ap)
	if !ok {
		return nil, false
	}
	return &Dest{AP: ap, raw: raw}, true
}

// ReadBatch reads datagrams until some are for quic-go, forwarding the
// others, and returns how many it left in the lowest slots of ms. Datagrams
// for quic-go that other readers (NewReader) received come first.
func (c *Conn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	for {
		if n := c.srv.take(ms); n > 0 {
			return n, nil
		}
		var n int
		var err error
		if c.io.gro {
			n, err = c.readGRO(ms)
		} else if n, err = c.io.read(ms, flags); err == nil {
			n = c.route(ms[:n])
		}
		if err != nil {
			if c.srv.woke(c.UDPConn(), err) {
				continue
			}
			return 0, err
		}
		if n > 0 {
			return n, nil
		}
	}
}

// SetReadDeadline sets the deadline of ReadBatch.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.srv.setDeadline(c.UDPConn(), t) }

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.UDPConn().SetWriteDeadline(t)
}

var _ quic.OOBCapablePacketConn = (*Conn)(nil)

// Counters is a snapshot of what a Conn did with the datagrams it read.
type Counters struct {
	// Forwarded and ForwardedBytes count datagrams sent on to peers.
	Forwarded, ForwardedBytes uint64
	// ToServer counts datagrams handed to quic-go.
	ToServer uint64
	// SendErrors counts forwarded datagrams the kernel refused.
	SendErrors uint64
	// Resets counts stateless resets sent.
	Resets uint64
	// Datagrams dropped, by reason: short header and CID not registered;
	// entry expired; a peer's first flight sent to the relay; too short for
	// a QUIC header; over a forwarding rate; a relay CID of an earlier run
	// that got no reset; from an address no live registration forwards to;
	// a long header with a relay's source CID.
	UnknownCID, Expired, PeerInitial, Malformed, RateLimited, StaleCID, UnknownSource, RelaySCID uint64
	// TunnelFull counts datagrams for a tunnel, or for the relay's server
	// from tunnels or other readers, dropped because the queue was full or
	// the tunnel gone.
	TunnelFull uint64
	// Sleep counts sleep datagrams handed to Config.Sleep.
	Sleep uint64
}

// counters are a Conn's counters. Forwarding adds to them once per batch.
type counters struct {
	forwarded, forwardedBytes, toServer, sendErrors, resets, sleep atomic.Uint64
	drops                                                          [numVerdicts]atomic.Uint64
}

type batchCounts struct {
	fwd, fwdBytes, toServer, sendErrs, resets, sleep uint64
	fwdTunnel                                        uint64 // forwarded into tunnels (in fwd once the batch is sent)
	resetsSent                                       uint64 // resets already taken out of what a flush sent
	drops                                            [numVerdicts]uint64
}

func (c *counters) add(b *batchCounts) {
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
	if b.sleep > 0 {
		c.sleep.Add(b.sleep)
	}
	for v, n := range b.drops {
		if n > 0 {
			c.drops[v].Add(n)
		}
	}
}

// Counters returns a snapshot of c's counters.
func (c *Conn) Counters() Counters {
	s := &c.stats
	return Counters{
		Forwarded:      s.forwarded.Load(),
		ForwardedBytes: s.forwardedBytes.Load(),
		ToServer:       s.toServer.Load(),
		SendErrors:     s.sendErrors.Load(),
		Resets:         s.resets.Load(),
		UnknownCID:     s.drops[dropUnknown].Load(),
		Expired:        s.drops[dropExpired].Load(),
		PeerInitial:    s.drops[dropPeerInitial].Load(),
		Malformed:      s.drops[dropMalformed].Load(),
		RateLimited:    s.drops[dropRateLimited].Load(),
		StaleCID:       s.drops[resetStale].Load(),
		UnknownSource:  s.drops[dropUnknownSource].Load(),
		RelaySCID:      s.drops[dropRelaySCID].Load(),
		TunnelFull:     s.drops[dropTunnelFull].Load(),
		Sleep:          s.sleep.Load(),
	}
}

package forward

import (
	"net/netip"
	"sync/atomic"
)

// Dest is a forwarding destination, immutable once published. Make one with
// Conn.NewDest, which encodes it for the socket.
type Dest struct {
	// AP is the address datagrams are forwarded to.
	AP  netip.AddrPort
	raw rawAddr // AP encoded for the socket
	tun *Tunnel // the tunnel of a virtual address; nil for a UDP destination
}

// IsTunnel reports whether d is a tunnel's virtual address, which only the
// engine can write to (never a kernel fast path).
func (d *Dest) IsTunnel() bool { return d.tun != nil }

// Entry is what the forwarding path knows of one registration: where its
// CIDs forward to, until when, and its rate buckets. The relay embeds one in
// its record of the registration and maps the registration's CIDs to it in
// a Table. The forwarding path reads it without locks.
type Entry struct {
	dest    atomic.Pointer[Dest]
	expires atomic.Int64 // unix nanoseconds

	// Forwarding rate caps, touched only on the forwarding path.
	packets, bytes TokenBucket
	// wake is when the forwarding path last called Config.Follow for this
	// entry (unix nanoseconds); see Conn.wakeFollow.
	wake atomic.Int64

	// FastBucket is the entry's rate bucket in the fast path (0: none). Set
	// before the entry's CIDs are published, never changed after.
	FastBucket uint32
	// Owner is the relay's record this entry belongs to. The forwarding
	// path never reads it; Config.Follow gets the entry, and so the owner,
	// back.
	Owner any
}

// Dest returns the entry's destination (nil before the first SetDest).
func (e *Entry) Dest() *Dest { return e.dest.Load() }

// SetDest makes d the entry's destination and returns the previous one.
func (e *Entry) SetDest(d *Dest) (old *Dest) { return e.dest.Swap(d) }

// Expires returns when the entry stops forwarding (unix nanoseconds).
func (e *Entry) Expires() int64 { return e.expires.Load() }

// SetExpires sets when the entry stops forwarding (unix nanoseconds).
func (e *Entry) SetExpires(unixNano int64) { e.expires.Store(unixNano) }

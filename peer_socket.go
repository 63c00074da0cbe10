package quicpipe

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/quicpipe/quicpipe/internal/wire"
)

// peerConn is a peer's socket as quic-go sees it. It implements
// quic.OOBCapablePacketConn and ReadBatch, so quic-go keeps batched reads,
// ECN and GSO. It adds three things beside the plain socket:
//
//   - hold-back (dialer): long-header packets to the relay whose destination
//     CID is the original destination CID of a pending peer dial are never
//     sent; they are captured as the first flight the application delivers
//     out of band. A later long-header packet of the dial (its source CID,
//     another destination CID) shows that it heard from the accepter.
//   - injection (accepter): datagrams of a first flight are handed to quic-go
//     as if they had arrived from the relay.
//   - direct paths (both, unless Config.DisableDirect): quic-go always sees
//     the relay as the remote address of every peer connection. On the way
//     out, a connection whose manager moved it onto a direct path has its
//     datagrams sent to the other peer's address instead; on the way in,
//     every QUIC datagram gets the relay's address as its source, and path
//     control datagrams (probes, candidates) are taken out of the batch for
//     the direct-path manager. See docs/decisions/0010-direct-path.md.
//
// The *net.UDPConn is held in udpSocket, not embedded: quic-go must see only
// the methods declared here and udpSocket's pass-throughs.
type peerConn struct {
	udpSocket
	pc    *ipv4.PacketConn
	relay netip.AddrPort

	holding atomic.Int32 // number of active holds: the write fast path checks it
	holdMu  sync.Mutex
	holds   map[string]*capture // by original destination CID

	injMu        sync.Mutex
	injected     []injectedPacket
	userDeadline bool // quic-go set a read deadline: timeouts are its own
	woken        bool // a read deadline was set to wake the reader

	// Direct paths; ctrl is nil when they are off.
	relayUDP *net.UDPAddr    // the source quic-go sees on every datagram
	ctrl     chan ctrlPacket // control datagrams for the direct manager
	ctrlDrop atomic.Uint64   // control datagrams dropped here
	routesMu sync.Mutex      // serializes updates of routes
	routes   atomic.Pointer[map[*net.UDPAddr]*connRoute]
}

// ctrlPacket is a path control datagram taken out of a batch.
type ctrlPacket struct {
	b    []byte
	from netip.AddrPort
	tag  [8]byte // its connection tag (see ctrlTag)
}

// connRoute says where one connection's datagrams go. quic-go passes every
// datagram of a connection to WriteMsgUDP with the same *net.UDPAddr, the
// connection's remote address (Conn.RemoteAddr returns it), so that pointer
// is the key: each peer connection is given its own copy of the relay's
// address. The route is read on every send: atomics only.
type connRoute struct {
	direct   atomic.Pointer[netip.AddrPort] // nil: through the relay
	wantDCID atomic.Bool                    // record the next short-header DCID
	failed   atomic.Bool                    // a send on the direct path failed
	keepLast atomic.Bool                    // record the last datagram sent (see lastSent)
	sends    atomic.Uint64                  // sends on the direct path

	mu      sync.Mutex
	dcid    CID // the other peer's CID, as last seen in an outgoing packet
	hasDCID bool
	last    []byte // the last datagram sent while keepLast was set
}

// recordLast keeps a copy of the last datagram of a send (the last segment
// of a GSO batch). Only done while the direct path is suspect.
func (r *connRoute) recordLast(b, oob []byte) {
	if seg := gsoSegmentSize(oob); seg > 0 && seg < len(b) {
		b = b[(len(b)-1)/seg*seg:]
	}
	r.mu.Lock()
	r.last = append(r.last[:0], b...)
	r.mu.Unlock()
}

// takeLast returns the recorded datagram, if any, and stops recording.
func (r *connRoute) takeLast() []byte {
	r.keepLast.Store(false)
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.last) == 0 {
		return nil
	}
	b := bytes.Clone(r.last)
	r.last = r.last[:0]
	return b
}

// captureDCID records the destination CID of an outgoing 1-RTT, Handshake
// or Initial packet: a CID of the other peer that its relay registration
// maps. (Only the dialer's first Initials carry another, random one; they
// are held back and never come here.)
func (r *connRoute) captureDCID(b []byte) {
	var dcid []byte
	switch {
	case len(b) >= 1+CIDLen && b[0]&0xc0 == 0x40: // short header
		dcid = b[1 : 1+CIDLen]
	case len(b) >= 6+CIDLen && (b[0]&0xf0 == 0xc0 || b[0]&0xf0 == 0xe0) && b[5] == CIDLen: // Initial, Handshake
		dcid = b[6 : 6+CIDLen]
	default:
		return
	}
	r.mu.Lock()
	copy(r.dcid[:], dcid)
	r.hasDCID = true
	r.mu.Unlock()
	r.wantDCID.Store(false)
}

// peerDCID returns the last recorded CID of the other peer and asks for a
// fresh one (quic-go rotates them).
func (r *connRoute) peerDCID() (CID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.wantDCID.Store(true)
	return r.dcid, r.hasDCID
}

type injectedPacket struct {
	b    []byte
	from net.Addr
}

// newPeerConn wraps c. If direct is true, direct paths are on: control
// datagrams are taken out for the direct manager and QUIC datagrams get the
// relay's address as their source.
func newPeerConn(c *net.UDPConn, relay netip.AddrPort, direct bool) *peerConn {
	pc := &peerConn{
		udpSocket: udpSocket{c},
		pc:        ipv4.NewPacketConn(c),
		relay:     netAddrPort(relay),
		holds:     make(map[string]*capture),
	}
	if direct {
		pc.relayUDP = net.UDPAddrFromAddrPort(relay)
		pc.ctrl = make(chan ctrlPacket, 64)
	}
	return pc
}

// addRoute starts routing the datagrams quic-go sends to remote by r.
func (c *peerConn) addRoute(remote *net.UDPAddr, r *connRoute) {
	c.routesMu.Lock()
	defer c.routesMu.Unlock()
	m := map[*net.UDPAddr]*connRoute{remote: r}
	if old := c.routes.Load(); old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	c.routes.Store(&m)
}

// removeRoute stops routing datagrams to remote.
func (c *peerConn) removeRoute(remote *net.UDPAddr) {
	c.routesMu.Lock()
	defer c.routesMu.Unlock()
	old := c.routes.Load()
	if old == nil {
		return
	}
	if _, ok := (*old)[remote]; !ok {
		return
	}
	m := make(map[*net.UDPAddr]*connRoute, len(*old))
	for k, v := range *old {
		if k != remote {
			m[k] = v
		}
	}
	c.routes.Store(&m)
}

// writeCtrl sends a control datagram to "to", with optional control
// messages (a low TTL).
func (c *peerConn) writeCtrl(b, oob []byte, to netip.AddrPort) error {
	_, _, err := c.conn.WriteMsgUDPAddrPort(b, oob, to)
	return err
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

// WriteMsgUDP is how quic-go sends. Held-back packets are captured instead;
// datagrams of a connection on a direct path go to the other peer.
func (c *peerConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if c.holding.Load() != 0 && len(b) > 0 && b[0]&0x80 != 0 && addr != nil &&
		netAddrPort(addr.AddrPort()) == c.relay {
		return c.writeHolding(b, oob, addr)
	}
	return c.writeUnheld(b, oob, addr)
}

// writeUnheld sends datagrams that are not held back.
func (c *peerConn) writeUnheld(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if m := c.routes.Load(); m != nil {
		if r := (*m)[addr]; r != nil {
			return c.writeRoute(r, b, oob, addr)
		}
	}
	return c.writeRelay(b, oob, addr)
}

// writeRelay sends to addr as given. WriteMsgUDPAddrPort does not allocate
// a sockaddr per send as WriteMsgUDP does.
func (c *peerConn) writeRelay(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	return c.conn.WriteMsgUDPAddrPort(b, oob, netAddrPort(addr.AddrPort()))
}

// writeRoute sends the datagrams of a connection with a route.
func (c *peerConn) writeRoute(r *connRoute, b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	if r.wantDCID.Load() {
		r.captureDCID(b)
	}
	if d := r.direct.Load(); d != nil {
		if r.keepLast.Load() {
			r.recordLast(b, oob)
		}
		r.sends.Add(1)
		n, oobn, err := c.conn.WriteMsgUDPAddrPort(b, oob, *d)
		if err == nil {
			return n, oobn, nil
		}
		// quic-go closes the connection on a send error (other than
		// "message too long"). The direct path is failing: send over the
		// relay and let the manager fall back.
		r.failed.Store(true)
	} else if r.keepLast.Load() {
		r.recordLast(b, oob)
	}
	return c.writeRelay(b, oob, addr)
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

// inject queues datagram b as received from "from" and wakes the reader.
func (c *peerConn) inject(b []byte, from net.Addr) {
	c.injMu.Lock()
	defer c.injMu.Unlock()
	c.injected = append(c.injected, injectedPacket{b: bytes.Clone(b), from: from})
	if !c.userDeadline && !c.woken {
		c.woken = true
		c.conn.SetReadDeadline(time.Unix(1, 0))
	}
}

// ReadBatch is how quic-go reads: injected datagrams first, then the socket.
func (c *peerConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	for {
		if n := c.takeInjected(ms); n > 0 {
			return n, nil
		}
		n, err := c.pc.ReadBatch(ms, flags)
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			c.injMu.Lock()
			if c.woken && !c.userDeadline {
				c.woken = false
				c.conn.SetReadDeadline(time.Time{})
				c.injMu.Unlock()
				continue
			}
			c.injMu.Unlock()
		}
		if err == nil && n > 0 && c.ctrl != nil {
			if n = c.sortBatch(ms[:n]); n == 0 {
				continue // only control datagrams
			}
		}
		return n, err
	}
}

// sortBatch takes the control datagrams out of a batch and gives every
// other datagram the relay's address as its source, so that quic-go sees
// one remote address whichever path a packet took (and never starts a path
// validation of its own). quic-go pairs message i with its packet buffer i,
// so the remaining datagrams are copied down into the lowest slots, never
// reordered or given another slot's buffer. It returns how many remain.
func (c *peerConn) sortBatch(ms []ipv4.Message) int {
	k := 0
	for i := range ms {
		m := &ms[i]
		if isCtrl(m.Buffers[0][:m.N]) {
			c.takeCtrl(m)
			continue
		}
		if k != i {
			d := &ms[k]
			d.N = copy(d.Buffers[0], m.Buffers[0][:m.N])
			d.NN = copy(d.OOB, m.OOB[:m.NN])
			d.Flags = m.Flags
		}
		ms[k].Addr = c.relayUDP
		k++
	}
	return k
}

// takeCtrl hands a control datagram to the direct manager, or drops it if
// the manager is behind.
func (c *peerConn) takeCtrl(m *ipv4.Message) {
	ua, ok := m.Addr.(*net.UDPAddr)
	tag, valid := ctrlTag(m.Buffers[0][:m.N])
	if !ok || !valid {
		c.ctrlDrop.Add(1)
		return
	}
	p := ctrlPacket{b: bytes.Clone(m.Buffers[0][:m.N]), from: netAddrPort(ua.AddrPort()), tag: tag}
	select {
	case c.ctrl <- p:
	default:
		c.ctrlDrop.Add(1)
	}
}

func (c *peerConn) takeInjected(ms []ipv4.Message) int {
	c.injMu.Lock()
	defer c.injMu.Unlock()
	n := 0
	for n < len(ms) && n < len(c.injected) {
		p := c.injected[n]
		m := &ms[n]
		m.N = copy(m.Buffers[0], p.b)
		m.NN = 0
		m.Flags = 0
		m.Addr = p.from
		n++
	}
	c.injected = c.injected[n:]
	if len(c.injected) == 0 {
		c.injected = nil
	}
	return n
}

// SetReadDeadline passes quic-go's deadline through and remembers it, so
// that its timeouts are never mistaken for a wake-up.
func (c *peerConn) SetReadDeadline(t time.Time) error {
	c.injMu.Lock()
	defer c.injMu.Unlock()
	c.userDeadline = !t.IsZero()
	c.woken = false
	return c.conn.SetReadDeadline(t)
}

func (c *peerConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.conn.SetWriteDeadline(t)
}

func (c *peerConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, errors.New("quicpipe: not a UDP address")
	}
	n, _, err := c.WriteMsgUDP(b, nil, ua)
	return n, err
}

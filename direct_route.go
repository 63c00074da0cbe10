package quicpipe

import (
	"bytes"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/quicpipe/quicpipe/internal/batch"
	"golang.org/x/net/ipv4"
)

// ctrlQueueLen is how many control datagrams wait for the direct manager
// before more are dropped.
const ctrlQueueLen = 64

// directRoutes is the direct-path state of a peer's socket; ctrl is nil
// when direct paths are off.
type directRoutes struct {
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
	_, _, err := c.UDPConn().WriteMsgUDPAddrPort(b, oob, to)
	return err
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
		n, oobn, err := c.UDPConn().WriteMsgUDPAddrPort(b, oob, *d)
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
		if isSleep(m) {
			c.handSleep(m)
			continue
		}
		if isCtrl(m.Buffers[0][:m.N]) {
			c.takeCtrl(m)
			continue
		}
		batch.Move(ms, k, i)
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

package quicpipe

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/quicpipe/quicpipe/internal/wire"
)

// peerConn is a peer's socket as quic-go sees it. It implements
// quic.OOBCapablePacketConn and ReadBatch, so quic-go keeps batched reads,
// ECN and GSO. It adds two things beside the plain socket:
//
//   - hold-back (dialer): long-header packets to the relay whose destination
//     CID is the original destination CID of a pending peer dial are never
//     sent; they are captured as the first flight the application delivers
//     out of band.
//   - injection (accepter): datagrams of a first flight are handed to quic-go
//     as if they had arrived from the relay.
//
// The *net.UDPConn is held in a field, not embedded: quic-go must see only
// the methods declared here.
type peerConn struct {
	conn  *net.UDPConn
	pc    *ipv4.PacketConn
	relay netip.AddrPort

	holding atomic.Int32 // number of active holds: the write fast path checks it
	holdMu  sync.Mutex
	holds   map[string]*capture // by original destination CID

	injMu        sync.Mutex
	injected     []injectedPacket
	userDeadline bool // quic-go set a read deadline: timeouts are its own
	woken        bool // a read deadline was set to wake the reader
}

type injectedPacket struct {
	b    []byte
	from net.Addr
}

func newPeerConn(c *net.UDPConn, relay netip.AddrPort) *peerConn {
	return &peerConn{
		conn:  c,
		pc:    ipv4.NewPacketConn(c),
		relay: netAddrPort(relay),
		holds: make(map[string]*capture),
	}
}

// capture collects the held-back datagrams of one dial until they hold a
// complete ClientHello.
type capture struct {
	mu        sync.Mutex
	datagrams [][]byte
	flight    *FirstFlight
	err       error
	done      chan struct{} // closed when flight or err is set
	held      int           // datagrams held back in all
}

func newCapture() *capture { return &capture{done: make(chan struct{})} }

func (c *capture) add(d []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.held++
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

// captureFor returns the capture for a datagram, or nil.
func (c *peerConn) captureFor(d []byte) *capture {
	if len(d) < 6 || d[0]&0x80 == 0 {
		return nil
	}
	dcid, err := wire.DestCID(d)
	if err != nil {
		return nil
	}
	c.holdMu.Lock()
	defer c.holdMu.Unlock()
	return c.holds[string(dcid)]
}

// WriteMsgUDP is how quic-go sends. Held-back packets are captured instead.
func (c *peerConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if c.holding.Load() == 0 || len(b) == 0 || b[0]&0x80 == 0 || addr == nil ||
		netAddrPort(addr.AddrPort()) != c.relay {
		return c.conn.WriteMsgUDP(b, oob, addr)
	}
	// With GSO, b holds several datagrams of segSize bytes (the last may be
	// shorter), all of one connection.
	segSize := gsoSegmentSize(oob)
	if segSize <= 0 || segSize > len(b) {
		segSize = len(b)
	}
	var rest [][]byte
	for off := 0; off < len(b); off += segSize {
		d := b[off:min(off+segSize, len(b))]
		if cp := c.captureFor(d); cp != nil {
			cp.add(d)
		} else {
			rest = append(rest, d)
		}
	}
	for _, d := range rest {
		// Rare: a batch that mixes held and other packets. Send the others
		// one by one, without the GSO control message.
		if _, _, err := c.conn.WriteMsgUDP(d, nil, addr); err != nil {
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
		return n, err
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

func (c *peerConn) ReadFrom(b []byte) (int, net.Addr, error) { return c.conn.ReadFrom(b) }
func (c *peerConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, errors.New("quicpipe: not a UDP address")
	}
	n, _, err := c.WriteMsgUDP(b, nil, ua)
	return n, err
}
func (c *peerConn) Close() error                       { return c.conn.Close() }
func (c *peerConn) LocalAddr() net.Addr                { return c.conn.LocalAddr() }
func (c *peerConn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }
func (c *peerConn) SyscallConn() (syscall.RawConn, error) {
	return c.conn.SyscallConn()
}
func (c *peerConn) SetReadBuffer(n int) error  { return c.conn.SetReadBuffer(n) }
func (c *peerConn) SetWriteBuffer(n int) error { return c.conn.SetWriteBuffer(n) }
func (c *peerConn) ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error) {
	return c.conn.ReadMsgUDP(b, oob)
}

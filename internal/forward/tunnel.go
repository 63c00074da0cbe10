package forward

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// TunnelPrefix holds the virtual addresses of tunnels: the IPv6 discard
// prefix 100::/64 (RFC 6666), which is never routed, so that no datagram
// from the network can carry one as its source and the kernel can never send
// to one. To the engine, the datagrams a peer sends through a tunnel come
// from the tunnel's virtual address, and datagrams forwarded to that address
// are written into the tunnel.
var TunnelPrefix = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x01}), 64)

// TunnelPort is the port of every virtual address.
const TunnelPort = 1

// MaxTunnelDatagram is the largest datagram a tunnel carries: more than any
// QUIC datagram quic-go sends (1452 bytes at most).
const MaxTunnelDatagram = 1500

// IsTunnelAddr reports whether a is a tunnel's virtual address.
func IsTunnelAddr(a netip.Addr) bool { return TunnelPrefix.Contains(a) }

// Packet is one datagram queued for a tunnel or for the relay's HTTP/3
// server, in a pooled buffer.
type Packet struct {
	buf  [MaxTunnelDatagram]byte
	n    int
	src  AddrKey // for the server: the tunnel or address it came from
	oob  [maxPacketOOB]byte
	noob int // for the server: control messages of the read (another reader's)
}

// Bytes returns the datagram.
func (p *Packet) Bytes() []byte { return p.buf[:p.n] }

// Release gives p's buffer back to the pool; p must not be used after.
func (p *Packet) Release() { packetPool.Put(p) }

var packetPool = sync.Pool{New: func() any { return new(Packet) }}

func newPacket(b []byte) *Packet {
	p := packetPool.Get().(*Packet)
	p.n = copy(p.buf[:], b)
	p.noob = 0
	return p
}

// NewPacket returns a copy of b in a pooled buffer, or nil if b is longer
// than MaxTunnelDatagram.
func NewPacket(b []byte) *Packet {
	if len(b) > MaxTunnelDatagram {
		return nil
	}
	return newPacket(b)
}

// tunnels is the engine's set of open tunnels and the queue of datagrams
// from tunnels for the relay's HTTP/3 server.
type tunnels struct {
	mu   sync.RWMutex
	m    map[AddrKey]*Tunnel
	srv  *TunnelConn // nil until TunnelConn is called
	once sync.Once
}

// Tunnel is one peer's tunnel as the engine sees it: a virtual source
// address for what the peer sends (Input), and a bounded queue of what is
// forwarded or sent to it (Out). Its methods are safe for concurrent use.
type Tunnel struct {
	c    *Conn
	ap   netip.AddrPort
	key  AddrKey
	dest *Dest
	out  chan *Packet
	done chan struct{}
	once sync.Once

	queued, dropped atomic.Uint64
}

// ErrTunnelExists is returned by OpenTunnel for an address already in use.
var ErrTunnelExists = errors.New("forward: tunnel address in use")

// OpenTunnel opens a tunnel with virtual address addr (in TunnelPrefix), whose
// queue towards the peer holds queueLen datagrams. The caller closes it.
func (c *Conn) OpenTunnel(addr netip.Addr, queueLen int) (*Tunnel, error) {
	if !IsTunnelAddr(addr) {
		return nil, errors.New("forward: tunnel address outside " + TunnelPrefix.String())
	}
	if queueLen < 1 {
		return nil, errors.New("forward: tunnel queue length must be positive")
	}
	ap := netip.AddrPortFrom(addr, TunnelPort)
	t := &Tunnel{c: c, ap: ap, key: KeyOf(ap), out: make(chan *Packet, queueLen), done: make(chan struct{})}
	t.dest = &Dest{AP: ap, tun: t}
	ts := &c.tuns
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if _, ok := ts.m[t.key]; ok {
		return nil, ErrTunnelExists
	}
	if ts.m == nil {
		ts.m = make(map[AddrKey]*Tunnel)
	}
	ts.m[t.key] = t
	return t, nil
}

// tunnel returns the open tunnel with key k, or nil.
func (c *Conn) tunnel(k AddrKey) *Tunnel {
	c.tuns.mu.RLock()
	t := c.tuns.m[k]
	c.tuns.mu.RUnlock()
	return t
}

// Addr returns the tunnel's virtual address.
func (t *Tunnel) Addr() netip.AddrPort { return t.ap }

// Out returns the queue of datagrams for the peer. The reader releases each.
func (t *Tunnel) Out() <-chan *Packet { return t.out }

// Done is closed when the tunnel is closed.
func (t *Tunnel) Done() <-chan struct{} { return t.done }

// Dropped returns how many datagrams for the peer were dropped because the
// queue was full or the tunnel closed.
func (t *Tunnel) Dropped() uint64 { return t.dropped.Load() }

// Close removes the tunnel: datagrams for its address are dropped from now on
// (its registrations lapse as usual). Close is idempotent.
func (t *Tunnel) Close() {
	t.once.Do(func() {
		ts := &t.c.tuns
		ts.mu.Lock()
		delete(ts.m, t.key)
		ts.mu.Unlock()
		close(t.done)
		for {
			select {
			case p := <-t.out:
				p.Release()
			default:
				return
			}
		}
	})
}

// enqueue copies b into the queue towards the peer without ever blocking,
// and reports whether it was queued.
func (t *Tunnel) enqueue(b []byte) bool {
	if len(b) > MaxTunnelDatagram {
		t.dropped.Add(1)
		return false
	}
	select {
	case <-t.done:
		t.dropped.Add(1)
		return false
	default:
	}
	p := newPacket(b)
	select {
	case t.out <- p:
		t.queued.Add(1)
		return true
	default:
		p.Release()
		t.dropped.Add(1)
		return false
	}
}

// Input handles datagram b that the peer sent through the tunnel, exactly as
// the engine handles one read from the socket from the tunnel's address:
// forwarded (to a UDP peer or into another tunnel), handed to the relay's
// HTTP/3 server (through TunnelConn), or dropped and counted. b is not
// retained.
func (t *Tunnel) Input(b []byte) {
	c := t.c
	now := time.Now().UnixNano()
	src := srcCheck{key: t.key, tunnel: true}
	var n batchCounts
	v, d := c.classify(b, &src, now)
	switch v {
	case forward:
		n.fwdBytes = uint64(len(b))
		switch {
		case d.tun != nil:
			if d.tun.enqueue(b) {
				n.fwd = 1
			} else {
				n.fwdBytes = 0
				n.drops[dropTunnelFull]++
			}
		default:
			if _, err := c.UDPConn().WriteToUDPAddrPort(b, d.AP); err != nil {
				n.sendErrs = 1
			} else {
				n.fwd = 1
			}
		}
	case toServer:
		if c.tuns.toServer(b, t.key) {
			n.toServer = 1
		} else {
			n.drops[dropTunnelFull]++
		}
	case resetStale:
		// The relay answers stale CIDs with stateless resets on UDP
		// only: a tunnel never outlives the relay's run.
		n.drops[resetStale]++
	default:
		n.drops[v]++
	}
	c.stats.add(&n)
}

// toServer queues b, from the tunnel with key src, for the HTTP/3 server.
func (ts *tunnels) toServer(b []byte, src AddrKey) bool {
	ts.mu.RLock()
	srv := ts.srv
	ts.mu.RUnlock()
	if srv == nil || len(b) > MaxTunnelDatagram {
		return false
	}
	p := newPacket(b)
	p.src = src
	select {
	case srv.in <- p:
		return true
	default:
		p.Release()
		return false
	}
}

// serverQueueLen bounds the datagrams from all tunnels waiting for the
// relay's HTTP/3 server.
const serverQueueLen = 1024

// TunnelConn returns the packet connection through which the relay's HTTP/3
// server (a second quic.Transport beside the one on the socket) talks to
// peers in tunnels: it reads what peers sent through their tunnels to the
// relay itself, from their virtual addresses, and writes into the tunnel of
// the address it writes to. Every call returns the same TunnelConn.
func (c *Conn) TunnelConn() *TunnelConn {
	ts := &c.tuns
	ts.once.Do(func() {
		srv := &TunnelConn{c: c, in: make(chan *Packet, serverQueueLen), done: make(chan struct{}), wake: make(chan struct{})}
		ts.mu.Lock()
		ts.srv = srv
		ts.mu.Unlock()
	})
	ts.mu.RLock()
	defer ts.mu.RUnlock()
	return ts.srv
}

// TunnelConn is the relay's HTTP/3 server's side of all tunnels, as a
// net.PacketConn for quic-go (see Conn.TunnelConn).
type TunnelConn struct {
	c    *Conn
	in   chan *Packet
	done chan struct{}
	once sync.Once

	mu       sync.Mutex
	deadline time.Time
	wake     chan struct{} // closed and replaced when the deadline changes
}

var errTunnelConnClosed = errors.New("forward: tunnel conn closed")

// ReadFrom returns the next datagram a peer sent through its tunnel to the
// relay itself, and the tunnel's virtual address.
func (s *TunnelConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		s.mu.Lock()
		dl, wake := s.deadline, s.wake
		s.mu.Unlock()
		var timeout <-chan time.Time
		var tm *time.Timer
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			tm = time.NewTimer(d)
			timeout = tm.C
		}
		var p *Packet
		var err error
		select {
		case p = <-s.in:
		case <-s.done:
			err = net.ErrClosed
		case <-wake:
		case <-timeout:
			err = os.ErrDeadlineExceeded
		}
		if tm != nil {
			tm.Stop()
		}
		if p != nil {
			n := copy(b, p.Bytes())
			a := net.UDPAddrFromAddrPort(p.src.AddrPort())
			p.Release()
			return n, a, nil
		}
		if err != nil {
			return 0, nil, err
		}
	}
}

// WriteTo writes b into the tunnel of addr, a virtual address. A datagram
// for a tunnel that is gone, or whose queue is full, is dropped, as a full
// socket buffer would drop it.
func (s *TunnelConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	select {
	case <-s.done:
		return 0, net.ErrClosed
	default:
	}
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, errors.New("forward: tunnel conn: not a UDP address")
	}
	var n batchCounts
	if t := s.c.tunnel(KeyOf(ua.AddrPort())); t == nil || !t.enqueue(b) {
		n.drops[dropTunnelFull]++
		s.c.stats.add(&n)
	}
	return len(b), nil
}

// Close stops ReadFrom and WriteTo; it does not close the tunnels.
func (s *TunnelConn) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}

// LocalAddr returns the unspecified address of the tunnel prefix.
func (s *TunnelConn) LocalAddr() net.Addr {
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(TunnelPrefix.Addr(), TunnelPort))
}

// SetDeadline sets the read deadline; writes never block.
func (s *TunnelConn) SetDeadline(t time.Time) error { return s.SetReadDeadline(t) }

// SetReadDeadline sets the deadline of ReadFrom, waking a ReadFrom in progress.
func (s *TunnelConn) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	s.deadline = t
	close(s.wake)
	s.wake = make(chan struct{})
	s.mu.Unlock()
	return nil
}

// SetWriteDeadline does nothing: writes never block.
func (s *TunnelConn) SetWriteDeadline(time.Time) error { return nil }

// SetReadBuffer does nothing: the queue is bounded by the engine. quic-go
// calls it on every connection it is given.
func (s *TunnelConn) SetReadBuffer(int) error { return nil }

// SetWriteBuffer does nothing, as SetReadBuffer.
func (s *TunnelConn) SetWriteBuffer(int) error { return nil }

// AddrPort returns the address and port of k.
func (k AddrKey) AddrPort() netip.AddrPort {
	a := netip.AddrFrom16([16]byte(k[:16])).Unmap()
	return netip.AddrPortFrom(a, uint16(k[16])<<8|uint16(k[17]))
}

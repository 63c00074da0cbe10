// Package anycast stands for the shared address of a relay fleet in tests
// and benchmarks: a UDP proxy on loopback that peers send to as if it were
// the fleet's one address, which passes each peer's datagrams to one of
// several relays (the member a router's hash picks) and the relays'
// datagrams back to the peers from its own address.
//
// The proxy gives each peer its own upstream socket, which the relays see as
// the peer's address (as its NAT mapping), and which any relay may send to:
// what arrives there goes to the peer from the proxy's address, whichever
// relay sent it, as datagrams from any member reach a peer from the shared
// address. Route switches every peer to another relay at once, as a re-hash
// after a member joins or leaves does.
package anycast

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// MaxPeers bounds the peers a Proxy serves; datagrams from more are
// dropped.
const MaxPeers = 1024

// Proxy is the shared address of a fleet. Create it with New; Close stops
// it and closes its sockets.
type Proxy struct {
	front    *net.UDPConn
	backends []netip.AddrPort
	cur      atomic.Int32 // index in backends of the relay peers reach now

	mu     sync.Mutex
	peers  map[netip.AddrPort]*net.UDPConn // peer -> its upstream socket
	closed bool

	dropped atomic.Uint64
	wg      sync.WaitGroup
}

// New starts a proxy on a new loopback socket, passing datagrams to
// backends[0] until Route says otherwise.
func New(backends ...netip.AddrPort) (*Proxy, error) {
	if len(backends) == 0 {
		return nil, errors.New("anycast: no backend")
	}
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("anycast: %w", err)
	}
	p := &Proxy{front: front, backends: backends, peers: make(map[netip.AddrPort]*net.UDPConn)}
	p.wg.Go(p.readFront)
	return p, nil
}

// Addr returns the proxy's address: the fleet's shared address, where
// peers send.
func (p *Proxy) Addr() *net.UDPAddr { return p.front.LocalAddr().(*net.UDPAddr) }

// Route sends the datagrams of every peer to backends[i] from now on.
func (p *Proxy) Route(i int) error {
	if i < 0 || i >= len(p.backends) {
		return fmt.Errorf("anycast: no backend %d (there are %d)", i, len(p.backends))
	}
	p.cur.Store(int32(i))
	return nil
}

// Dropped counts the datagrams dropped: from peers beyond MaxPeers, or
// that a socket refused.
func (p *Proxy) Dropped() uint64 { return p.dropped.Load() }

// Close stops the proxy and closes its sockets.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	err := p.front.Close()
	for _, up := range p.peers {
		up.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// readFront passes the peers' datagrams to the current backend.
func (p *Proxy) readFront() {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := p.front.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		up := p.upstream(from)
		if up == nil {
			p.dropped.Add(1)
			continue
		}
		if _, err := up.WriteToUDPAddrPort(buf[:n], p.backends[p.cur.Load()]); err != nil {
			p.dropped.Add(1)
		}
	}
}

// upstream returns peer's upstream socket, opening it on its first
// datagram; nil if the proxy is closed or full.
func (p *Proxy) upstream(peer netip.AddrPort) *net.UDPConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if up := p.peers[peer]; up != nil || p.closed {
		return up
	}
	if len(p.peers) >= MaxPeers {
		return nil
	}
	up, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil
	}
	p.peers[peer] = up
	p.wg.Go(func() { p.readUpstream(peer, up) })
	return up
}

// readUpstream passes what any relay sends to peer's upstream socket to
// peer, from the proxy's address.
func (p *Proxy) readUpstream(peer netip.AddrPort, up *net.UDPConn) {
	buf := make([]byte, 64<<10)
	for {
		n, _, err := up.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if _, err := p.front.WriteToUDPAddrPort(buf[:n], peer); err != nil {
			p.dropped.Add(1)
		}
	}
}

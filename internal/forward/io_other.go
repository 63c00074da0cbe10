//go:build !linux

package forward

import (
	"crypto/sha256"
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
)

// batchIO is the portable fallback of the relay's batch I/O: x/net's batch
// calls (one datagram per call outside Linux) and one WriteTo per forwarded
// datagram.
type batchIO struct {
	conn  *net.UDPConn
	pc    *ipv4.PacketConn
	out   []queued
	keep  []int
	addrs []net.Addr

	gro     bool // never on outside Linux
	resets  [][maxResetLen]byte
	hmacBuf [sha256.Size]byte
}

type queued struct {
	b []byte
	d *Dest
}

// rawAddr is a destination as the portable path sends to it.
type rawAddr struct{}

func (io *batchIO) init(c *net.UDPConn, _ bool) error {
	io.conn = c
	io.pc = ipv4.NewPacketConn(c)
	return nil
}

func (io *batchIO) encode(netip.AddrPort) (rawAddr, bool) { return rawAddr{}, true }

func (io *batchIO) grow(n int) {
	if cap(io.keep) < n {
		io.keep = make([]int, 0, n)
		io.out = make([]queued, 0, n)
		io.addrs = make([]net.Addr, n)
		io.resets = make([][maxResetLen]byte, n)
	}
}

func (io *batchIO) read(ms []ipv4.Message, flags int) (int, error) {
	io.grow(len(ms))
	n, err := io.pc.ReadBatch(ms, flags)
	for i := range n {
		io.addrs[i] = ms[i].Addr
	}
	return n, err
}

func (io *batchIO) addr(i int) net.Addr { return io.addrs[i] }

// srcKey returns the source address of received datagram i as the
// forwarding rule compares it.
func (io *batchIO) srcKey(i int) AddrKey {
	if ua, ok := io.addrs[i].(*net.UDPAddr); ok {
		return KeyOf(ua.AddrPort())
	}
	return AddrKey{}
}

func (io *batchIO) queue(b []byte, d *Dest) { io.out = append(io.out, queued{b, d}) }

func (io *batchIO) resetBuf(i int) []byte { return io.resets[i][:] }

func (io *batchIO) queueTo(b []byte, i int) {
	if ua, ok := io.addrs[i].(*net.UDPAddr); ok {
		io.out = append(io.out, queued{b, &Dest{AP: ua.AddrPort()}})
	}
}

func (io *batchIO) flush() (sent, failed int) {
	for _, q := range io.out {
		if _, err := io.conn.WriteToUDPAddrPort(q.b, q.d.AP); err != nil {
			failed++
		} else {
			sent++
		}
	}
	io.out = io.out[:0]
	return sent, failed
}

// usesGSO reports whether forwarded datagrams go out as UDP GSO messages:
// never outside Linux.
func (io *batchIO) usesGSO() bool { return false }

// recvInfo does nothing: the portable path passes no control messages.
func (io *batchIO) recvInfo() {}

// segSize returns 0: reads hold one datagram each outside Linux.
func (io *batchIO) segSize(*ipv4.Message) int { return 0 }

// growSend does nothing: the portable send queue grows by itself.
func (io *batchIO) growSend(int) {}

// full reports false: the portable send queue grows by itself.
func (io *batchIO) full() bool { return false }

// sameFamily reports true: the portable path sends to netip addresses.
func (io *batchIO) sameFamily(*batchIO) bool { return true }

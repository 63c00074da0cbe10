package batch

import (
	"net"
	"syscall"
	"time"
)

// Socket holds the *net.UDPConn under the relay's and the peers' socket
// wrappers and passes quic.OOBCapablePacketConn's methods through to it.
// The wrappers embed Socket, not the *net.UDPConn, so quic-go sees only
// these methods and the ones a wrapper declares itself (ReadBatch, and
// whatever it intercepts), never the socket's own ReadBatch path.
type Socket struct {
	conn *net.UDPConn
}

// NewSocket returns the pass-through for c.
func NewSocket(c *net.UDPConn) Socket { return Socket{conn: c} }

// UDPConn returns the socket.
func (s Socket) UDPConn() *net.UDPConn { return s.conn }

// The methods of quic.OOBCapablePacketConn, passed through.

func (s Socket) ReadFrom(b []byte) (int, net.Addr, error)     { return s.conn.ReadFrom(b) }
func (s Socket) WriteTo(b []byte, addr net.Addr) (int, error) { return s.conn.WriteTo(b, addr) }
func (s Socket) Close() error                                 { return s.conn.Close() }
func (s Socket) LocalAddr() net.Addr                          { return s.conn.LocalAddr() }
func (s Socket) SetDeadline(t time.Time) error                { return s.conn.SetDeadline(t) }
func (s Socket) SetReadDeadline(t time.Time) error            { return s.conn.SetReadDeadline(t) }
func (s Socket) SetWriteDeadline(t time.Time) error           { return s.conn.SetWriteDeadline(t) }
func (s Socket) SyscallConn() (syscall.RawConn, error)        { return s.conn.SyscallConn() }
func (s Socket) SetReadBuffer(n int) error                    { return s.conn.SetReadBuffer(n) }
func (s Socket) SetWriteBuffer(n int) error                   { return s.conn.SetWriteBuffer(n) }
func (s Socket) ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error) {
	return s.conn.ReadMsgUDP(b, oob)
}
func (s Socket) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	return s.conn.WriteMsgUDP(b, oob, addr)
}

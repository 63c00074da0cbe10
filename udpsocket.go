package quicpipe

import (
	"net"
	"syscall"
	"time"
)

// udpSocket holds the *net.UDPConn under the relay's and the peers' socket
// wrappers and passes quic.OOBCapablePacketConn's methods through to it.
// The wrappers embed udpSocket, not the *net.UDPConn, so quic-go sees only
// these methods and the ones a wrapper declares itself (ReadBatch, and
// whatever it intercepts), never the socket's own ReadBatch path.
type udpSocket struct {
	conn *net.UDPConn
}

func (s udpSocket) ReadFrom(b []byte) (int, net.Addr, error)     { return s.conn.ReadFrom(b) }
func (s udpSocket) WriteTo(b []byte, addr net.Addr) (int, error) { return s.conn.WriteTo(b, addr) }
func (s udpSocket) Close() error                                 { return s.conn.Close() }
func (s udpSocket) LocalAddr() net.Addr                          { return s.conn.LocalAddr() }
func (s udpSocket) SetDeadline(t time.Time) error                { return s.conn.SetDeadline(t) }
func (s udpSocket) SetReadDeadline(t time.Time) error            { return s.conn.SetReadDeadline(t) }
func (s udpSocket) SetWriteDeadline(t time.Time) error           { return s.conn.SetWriteDeadline(t) }
func (s udpSocket) SyscallConn() (syscall.RawConn, error)        { return s.conn.SyscallConn() }
func (s udpSocket) SetReadBuffer(n int) error                    { return s.conn.SetReadBuffer(n) }
func (s udpSocket) SetWriteBuffer(n int) error                   { return s.conn.SetWriteBuffer(n) }
func (s udpSocket) ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error) {
	return s.conn.ReadMsgUDP(b, oob)
}
func (s udpSocket) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	return s.conn.WriteMsgUDP(b, oob, addr)
}

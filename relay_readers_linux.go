//go:build linux

package quicpipe

import (
	"context"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePortSupported reports whether the relay can open several readers of
// its port.
const reusePortSupported = true

// listenReusePort opens a UDP socket on addr with SO_REUSEPORT, so that the
// relay's extra readers can bind the same address.
func listenReusePort(addr *net.UDPAddr) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp", addr.String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// reusePortOf reports whether c has SO_REUSEPORT set.
func reusePortOf(c *net.UDPConn) (bool, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return false, err
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		v, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT)
	}); err != nil {
		return false, err
	}
	return v != 0, serr
}

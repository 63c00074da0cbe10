package quicpipe

import (
	"encoding/binary"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ttlOOB returns a control message that sends one datagram with the given
// IPv4 TTL (v6 false) or IPv6 hop limit, or nil if the socket cannot: a
// dual-stack IPv6 socket sending to an IPv4-mapped address takes neither.
func ttlOOB(conn *net.UDPConn, v6 bool, ttl int) []byte {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil
	}
	var domain int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	}); err != nil || serr != nil {
		return nil
	}
	level, typ := unix.IPPROTO_IP, unix.IP_TTL
	switch {
	case domain == unix.AF_INET && !v6:
	case domain == unix.AF_INET6 && v6:
		level, typ = unix.IPPROTO_IPV6, unix.IPV6_HOPLIMIT
	default:
		return nil
	}
	b := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = int32(level)
	h.Type = int32(typ)
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(b[unix.CmsgSpace(0):], uint32(ttl))
	return b
}

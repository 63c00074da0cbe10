//go:build linux

package quicpipe

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// addrReader reads the host's interface addresses over a netlink socket
// opened when the relay starts. The socket stays in the network namespace
// it was opened in, so later reads see the relay's namespace whatever
// thread they run on.
type addrReader struct {
	fd  int
	seq uint32
	buf []byte
}

func newAddrReader() (*addrReader, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("quicpipe: netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("quicpipe: netlink bind: %w", err)
	}
	// A reply that never comes must not hang the janitor.
	tv := unix.Timeval{Sec: 2}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &addrReader{fd: fd, buf: make([]byte, 1<<16)}, nil
}

// read dumps the addresses of every interface (RTM_GETADDR).
func (a *addrReader) read() ([]netip.Addr, error) {
	a.seq++
	req := make([]byte, unix.NLMSG_HDRLEN+unix.SizeofRtGenmsg)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.RTM_GETADDR)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], a.seq)
	req[unix.NLMSG_HDRLEN] = unix.AF_UNSPEC
	if err := unix.Sendto(a.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("quicpipe: netlink request: %w", err)
	}
	var addrs []netip.Addr
	for {
		n, _, err := unix.Recvfrom(a.fd, a.buf, 0)
		if err != nil {
			return nil, fmt.Errorf("quicpipe: netlink read: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(a.buf[:n])
		if err != nil {
			return nil, fmt.Errorf("quicpipe: netlink message: %w", err)
		}
		for i := range msgs {
			m := &msgs[i]
			if m.Header.Seq != a.seq {
				continue // the answer to an earlier request that timed out
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return addrs, nil
			case unix.NLMSG_ERROR:
				return nil, fmt.Errorf("quicpipe: netlink: error answer to RTM_GETADDR")
			case unix.RTM_NEWADDR:
				attrs, err := syscall.ParseNetlinkRouteAttr(m)
				if err != nil {
					continue
				}
				for _, at := range attrs {
					if at.Attr.Type != unix.IFA_ADDRESS && at.Attr.Type != unix.IFA_LOCAL {
						continue
					}
					if ip, ok := netip.AddrFromSlice(at.Value); ok {
						addrs = append(addrs, ip.Unmap())
					}
				}
			}
		}
	}
}

func (a *addrReader) close() error { return unix.Close(a.fd) }

//go:build linux

package forward

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// batchIO reads and writes datagram batches with recvmmsg and sendmmsg on the
// relay's socket. It allocates only when a batch is larger than any before,
// and when it turns the source address of a datagram kept for quic-go into a
// net.Addr; forwarded datagrams cost no allocation.
//
// The syscall functions are bound once, so that passing them to
// syscall.RawConn does not allocate a closure per call.
type batchIO struct {
	rc     syscall.RawConn
	family int // AF_INET or AF_INET6: how destinations are encoded

	rhdrs []unix.Mmsghdr
	riovs []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for either family

	shdrs []unix.Mmsghdr
	siovs []unix.Iovec
	ns    int // queued for sending

	keep []int // indexes of datagrams kept for quic-go

	resets [][maxResetLen]byte // per-slot buffers for stateless resets

	// UDP GSO: consecutive forwarded datagrams for one destination leave
	// as one message whose segments the kernel splits late, which costs
	// far less than one trip through the stack per datagram.
	gso     bool       // the socket supports UDP_SEGMENT and it has not failed
	gro     bool       // UDP_GRO is on: a read may hold many datagrams
	niov    int        // iovecs used by the queued messages
	smeta   []sendMeta // per queued message
	scmsg   [][]byte   // UDP_SEGMENT control message per queued message
	hmacBuf [sha256.Size]byte

	// State for the bound syscall functions.
	rcount, rn int
	rerr       error
	sfrom, sn  int
	serr       error
	recvF      func(fd uintptr) bool
	sendF      func(fd uintptr) bool
}

// sendMeta describes one queued message.
type sendMeta struct {
	d      *Dest // nil for a stateless reset
	seg    int   // segment size
	segs   int   // datagrams in the message
	bytes  int
	closed bool // a shorter last segment was added: nothing more may follow
}

// rawAddr is a destination encoded for the relay socket's family.
type rawAddr struct {
	sa  unix.RawSockaddrInet6 // holds a RawSockaddrInet4 for AF_INET
	len uint32
}

func (io *batchIO) init(c *net.UDPConn, gro bool) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		io.family, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	}); err != nil {
		return err
	}
	if serr != nil {
		return serr
	}
	io.rc = rc
	io.recvF = io.recvmmsg
	io.sendF = io.sendmmsg
	rc.Control(func(fd uintptr) {
		_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		io.gso = err == nil
		if gro {
			io.gro = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
		}
	})
	return nil
}

// sameFamily reports whether io's socket is of o's address family, so that
// destinations encoded for one serve the other.
func (io *batchIO) sameFamily(o *batchIO) bool { return io.family == o.family }

// recvInfo asks the socket for the control messages quic-go reads (packet
// info and ECN), for a socket quic-go never saw: an extra reader's.
func (io *batchIO) recvInfo() {
	io.rc.Control(func(fd uintptr) {
		f := int(fd)
		unix.SetsockoptInt(f, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		unix.SetsockoptInt(f, unix.IPPROTO_IP, unix.IP_RECVTOS, 1)
		if io.family == unix.AF_INET6 {
			unix.SetsockoptInt(f, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
			unix.SetsockoptInt(f, unix.IPPROTO_IPV6, unix.IPV6_RECVTCLASS, 1)
		}
	})
}

// segSize returns the size of the datagrams a GRO read coalesced into m (the
// last one may be shorter), or 0 if m holds one datagram.
func (io *batchIO) segSize(m *ipv4.Message) int {
	if !io.gro {
		return 0
	}
	b := m.OOB[:m.NN]
	for len(b) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(b) {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(int32(binary.NativeEndian.Uint32(b[unix.CmsgLen(0):])))
		}
		sp := unix.CmsgSpace(l - unix.CmsgLen(0))
		if sp >= len(b) {
			return 0
		}
		b = b[sp:]
	}
	return 0
}

// full reports whether the send batch cannot take one more message.
func (io *batchIO) full() bool { return io.ns+1 >= len(io.shdrs) || io.niov+1 >= len(io.siovs) }

func (io *batchIO) grow(n int) {
	if len(io.rhdrs) >= n {
		return
	}
	io.rhdrs = make([]unix.Mmsghdr, n)
	io.riovs = make([]unix.Iovec, n)
	io.names = make([]unix.RawSockaddrInet6, n)
	io.keep = make([]int, 0, n)
	io.resets = make([][maxResetLen]byte, n)
	io.growSend(n)
}

// growSend makes room for n messages and n iovecs in the send batch.
func (io *batchIO) growSend(n int) {
	if len(io.shdrs) >= n {
		return
	}
	io.shdrs = make([]unix.Mmsghdr, n)
	io.siovs = make([]unix.Iovec, n)
	io.smeta = make([]sendMeta, n)
	io.scmsg = make([][]byte, n)
	for i := range io.scmsg {
		io.scmsg[i] = make([]byte, unix.CmsgSpace(2))
	}
}

// encode returns ap as a destination for the relay socket, or false if the
// socket's family cannot reach it.
func (io *batchIO) encode(ap netip.AddrPort) (rawAddr, bool) {
	var ra rawAddr
	ip := ap.Addr()
	switch {
	case io.family == unix.AF_INET && ip.Unmap().Is4():
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&ra.sa))
		sa.Family = unix.AF_INET
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], ap.Port())
		sa.Addr = ip.Unmap().As4()
		ra.len = unix.SizeofSockaddrInet4
	case io.family == unix.AF_INET6:
		ra.sa.Family = unix.AF_INET6
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&ra.sa.Port))[:], ap.Port())
		ra.sa.Addr = ip.As16() // an IPv4 address becomes IPv4-mapped
		ra.len = unix.SizeofSockaddrInet6
	default:
		return ra, false
	}
	return ra, true
}

// read fills ms with one batch, blocking until at least one datagram arrives.
func (io *batchIO) read(ms []ipv4.Message, flags int) (int, error) {
	io.grow(len(ms))
	for i := range ms {
		b := ms[i].Buffers[0]
		h := &io.rhdrs[i].Hdr
		io.riovs[i].Base = unsafe.SliceData(b)
		io.riovs[i].SetLen(len(b))
		h.Iov = &io.riovs[i]
		h.Iovlen = 1
		h.Name = (*byte)(unsafe.Pointer(&io.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		if oob := ms[i].OOB; len(oob) > 0 {
			h.Control = unsafe.SliceData(oob)
			h.SetControllen(len(oob))
		} else {
			h.Control = nil
			h.SetControllen(0)
		}
		h.Flags = 0
	}
	io.rcount = len(ms)
	if err := io.rc.Read(io.recvF); err != nil {
		return 0, err
	}
	if io.rerr != nil {
		return 0, io.rerr
	}
	for i := range io.rn {
		ms[i].N = int(io.rhdrs[i].Len)
		ms[i].NN = int(io.rhdrs[i].Hdr.Controllen)
		ms[i].Flags = int(io.rhdrs[i].Hdr.Flags)
		ms[i].Addr = nil
	}
	return io.rn, nil
}

func (io *batchIO) recvmmsg(fd uintptr) bool {
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&io.rhdrs[0])),
		uintptr(io.rcount), unix.MSG_DONTWAIT, 0, 0)
	switch errno {
	case 0:
		io.rn, io.rerr = int(n), nil
		return true
	case unix.EAGAIN, unix.EINTR:
		return false // wait for readability
	default:
		io.rn, io.rerr = 0, errno
		return true
	}
}

// addr returns the source address of received datagram i.
func (io *batchIO) addr(i int) net.Addr {
	sa := &io.names[i]
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:])
		return &net.UDPAddr{IP: net.IP(append([]byte(nil), sa4.Addr[:]...)), Port: int(port)}
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		ua := &net.UDPAddr{IP: net.IP(append([]byte(nil), sa.Addr[:]...)), Port: int(port)}
		if sa.Scope_id != 0 {
			ua.Zone = zoneName(int(sa.Scope_id))
		}
		return ua
	}
	return &net.UDPAddr{}
}

// srcKey returns the source address of received datagram i as the
// forwarding rule compares it, without allocating.
func (io *batchIO) srcKey(i int) AddrKey {
	var k AddrKey
	sa := &io.names[i]
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		k[10], k[11] = 0xff, 0xff
		copy(k[12:16], sa4.Addr[:])
		*(*[2]byte)(k[16:]) = *(*[2]byte)(unsafe.Pointer(&sa4.Port))
	case unix.AF_INET6:
		copy(k[:16], sa.Addr[:])
		*(*[2]byte)(k[16:]) = *(*[2]byte)(unsafe.Pointer(&sa.Port))
	}
	return k
}

func zoneName(index int) string {
	if ifi, err := net.InterfaceByIndex(index); err == nil {
		return ifi.Name
	}
	return ""
}

// queue adds datagram b for d to the send batch: as one more segment of the
// last message if that goes to d too and GSO allows, else as a new message.
// A segment that follows the last one in memory (the datagrams of one GRO
// read) extends its iovec: a whole GRO read for one destination leaves as
// one message with one iovec, uncopied.
func (io *batchIO) queue(b []byte, d *Dest) {
	if io.gso && io.ns > 0 {
		m := &io.smeta[io.ns-1]
		if m.d == d && !m.closed && len(b) <= m.seg && m.segs < maxGSOSegments && m.bytes+len(b) <= maxGSOBytes {
			m.segs++
			m.bytes += len(b)
			m.closed = len(b) < m.seg
			h := &io.shdrs[io.ns-1].Hdr
			if last := &io.siovs[io.niov-1]; uintptr(unsafe.Pointer(last.Base))+uintptr(last.Len) == uintptr(unsafe.Pointer(unsafe.SliceData(b))) {
				last.SetLen(int(last.Len) + len(b))
			} else {
				io.siovs[io.niov].Base = unsafe.SliceData(b)
				io.siovs[io.niov].SetLen(len(b))
				io.niov++
				h.Iovlen++
			}
			if m.segs == 2 { // the message becomes a GSO message
				c := io.scmsg[io.ns-1]
				ch := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
				ch.Level = unix.IPPROTO_UDP
				ch.Type = unix.UDP_SEGMENT
				ch.SetLen(unix.CmsgLen(2))
				binary.NativeEndian.PutUint16(c[unix.CmsgLen(0):], uint16(m.seg))
				h.Control = &c[0]
				h.SetControllen(len(c))
			}
			return
		}
	}
	v := io.niov
	io.siovs[v].Base = unsafe.SliceData(b)
	io.siovs[v].SetLen(len(b))
	io.niov++
	i := io.ns
	io.smeta[i] = sendMeta{d: d, seg: len(b), segs: 1, bytes: len(b)}
	h := &io.shdrs[i].Hdr
	h.Iov = &io.siovs[v]
	h.Iovlen = 1
	h.Name = (*byte)(unsafe.Pointer(&d.raw.sa))
	h.Namelen = d.raw.len
	h.Control = nil
	h.SetControllen(0)
	io.ns++
}

// resetBuf returns the stateless-reset buffer of slot i.
func (io *batchIO) resetBuf(i int) []byte { return io.resets[i][:] }

// queueTo adds b to the send batch, addressed to the source of received
// datagram i.
func (io *batchIO) queueTo(b []byte, i int) {
	n := io.ns
	v := io.niov
	io.niov++
	io.smeta[n] = sendMeta{seg: len(b), segs: 1, bytes: len(b), closed: true}
	io.siovs[v].Base = unsafe.SliceData(b)
	io.siovs[v].SetLen(len(b))
	h := &io.shdrs[n].Hdr
	h.Iov = &io.siovs[v]
	h.Iovlen = 1
	h.Name = (*byte)(unsafe.Pointer(&io.names[i]))
	h.Namelen = io.rhdrs[i].Hdr.Namelen
	h.Control = nil
	h.SetControllen(0)
	io.ns++
}

// flush sends the queued datagrams without ever waiting for the socket: what
// the kernel does not take at once is dropped. It returns how many datagrams
// were sent and how many were dropped.
func (io *batchIO) flush() (sent, failed int) {
	segs := func(from, to int) (n int) {
		for _, m := range io.smeta[from:to] {
			n += m.segs
		}
		return n
	}
	for io.sfrom = 0; io.sfrom < io.ns; {
		io.sn, io.serr = 0, nil
		if err := io.rc.Write(io.sendF); err != nil {
			failed += segs(io.sfrom, io.ns)
			break
		}
		sent += segs(io.sfrom, io.sfrom+io.sn)
		io.sfrom += io.sn
		if io.serr != nil {
			// The message at sfrom failed (e.g. EAGAIN, EMSGSIZE,
			// unreachable): drop it and carry on with the rest. A
			// device that cannot segment (EIO) turns GSO off for good.
			if io.smeta[io.sfrom].segs > 1 && (io.serr == unix.EIO || io.serr == unix.EINVAL) {
				io.gso = false
			}
			failed += io.smeta[io.sfrom].segs
			io.sfrom++
		}
	}
	io.ns, io.niov = 0, 0
	return sent, failed
}

func (io *batchIO) sendmmsg(fd uintptr) bool {
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&io.shdrs[io.sfrom])),
		uintptr(io.ns-io.sfrom), unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		io.sn, io.serr = 0, errno
	} else {
		io.sn = int(n)
		if io.sn == 0 {
			io.serr = errors.New("sendmmsg sent nothing")
		}
	}
	return true // never wait for writability
}

// usesGSO reports whether forwarded datagrams go out as UDP GSO messages.
func (io *batchIO) usesGSO() bool { return io.gso }

package main

// Reference forwarders for the capacity comparison: the least a userspace
// relay can do per datagram on this kernel. They read batches with recvmmsg
// and send every datagram to one fixed destination, with no lookup at all:
//
//   - sendmmsg: one sendmmsg per batch, one kernel send path per datagram;
//   - gso: one sendmsg per batch with UDP_SEGMENT (all datagrams of a batch
//     have the same size here), one kernel send path per batch. The relay's
//     interface has UDP segmentation offload turned off (capacity lab), so
//     the kernel segments in software on the relay's core, as with a NIC
//     without USO; the datagrams leave R one by one, as in every other case.
//
// They show what the Quicpipe relay's path could reach.

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

func init() { roles["bareloop"] = bareLoopRole }

func bareLoopRole(args []string) error {
	fs := flag.NewFlagSet("bareloop", flag.ContinueOnError)
	listen := fs.String("listen", "", "UDP address")
	to := fs.String("to", "", "destination of every datagram")
	gso := fs.Bool("gso", false, "send each batch as one UDP GSO send")
	if err := fs.Parse(args); err != nil {
		return err
	}
	la, err := netip.ParseAddrPort(*listen)
	if err != nil {
		return err
	}
	dst, err := netip.ParseAddrPort(*to)
	if err != nil {
		return err
	}
	fd, err := bindUDP(la, unix.SO_RCVBUF, 4<<20, unix.SO_SNDBUF, 4<<20)
	if err != nil {
		return err
	}
	go func() {
		serveNothing()
		unix.Close(fd)
		unix.Exit(0)
	}()

	const batch = 64
	bufs := make([][]byte, batch)
	riovs := make([]unix.Iovec, batch)
	rhdrs := make([]unix.Mmsghdr, batch)
	shdrs := make([]unix.Mmsghdr, batch)
	var rsa unix.RawSockaddrInet4
	rsa.Family = unix.AF_INET
	rsa.Addr = dst.Addr().As4()
	p := (*[2]byte)(unsafe.Pointer(&rsa.Port))
	p[0], p[1] = byte(dst.Port()>>8), byte(dst.Port())
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
		riovs[i].Base = &bufs[i][0]
		riovs[i].SetLen(len(bufs[i]))
		rhdrs[i].Hdr.Iov = &riovs[i]
		rhdrs[i].Hdr.Iovlen = 1
		shdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&rsa))
		shdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet4
	}
	siovs := make([]unix.Iovec, batch)
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	warned := false
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&rhdrs[0])), batch, 0, 0, 0)
		if errno != 0 {
			if errno == unix.EINTR {
				continue
			}
			return errno
		}
		k := int(n)
		size := int(rhdrs[0].Len)
		same := true
		for i := 0; i < k; i++ {
			siovs[i].Base = &bufs[i][0]
			siovs[i].SetLen(int(rhdrs[i].Len))
			if int(rhdrs[i].Len) != size {
				same = false
			}
		}
		if *gso && same && k > 1 {
			// A GSO send carries at most 64 KiB: split the batch.
			per := max(1, 65000/(size+8))
			*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = uint16(size)
			for from := 0; from < k; from += per {
				m := unix.Msghdr{Name: (*byte)(unsafe.Pointer(&rsa)), Namelen: unix.SizeofSockaddrInet4,
					Iov: &siovs[from], Control: &oob[0]}
				m.SetIovlen(min(per, k-from))
				m.SetControllen(len(oob))
				if _, _, e := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&m)), unix.MSG_DONTWAIT); e != 0 && !warned {
					warned = true
					fmt.Fprintf(os.Stderr, "GSO send of %d x %d bytes: %v\n", min(per, k-from), size, e)
				}
			}
			continue
		}
		for i := 0; i < k; i++ {
			shdrs[i].Hdr.Iov = &siovs[i]
			shdrs[i].Hdr.Iovlen = 1
		}
		unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&shdrs[0])), uintptr(k), unix.MSG_DONTWAIT, 0, 0)
	}
}

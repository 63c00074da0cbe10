package main

// The load generator role: blasts equal-size UDP datagrams from one socket
// with sendmmsg, as fast as it can or at a given rate, for a bounded time and
// count. Payloads are QUIC short-header packets for a relay's registered CIDs
// (rotating over the window), TURN ChannelData messages on a bound channel,
// or plain datagrams for the XDP reflector.

import (
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/quicpipe/quicpipe"
	"golang.org/x/sys/unix"
)

func init() { roles["gen"] = genRole }

func genRole(args []string) error {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	bind := fs.String("bind", "", "source address:port")
	to := fs.String("to", "", "destination address:port")
	size := fs.Int("size", 1200, "payload bytes per datagram (before any TURN header)")
	mode := fs.String("mode", "raw", "raw, cids or turn")
	cidKey := fs.String("cidkey", "", "hex CID key (mode cids)")
	ncids := fs.Int("ncids", 64, "CIDs to rotate over, from index 1 (mode cids)")
	peer := fs.String("peer", "", "TURN peer address:port (mode turn)")
	batch := fs.Int("batch", 64, "datagrams per sendmmsg")
	gso := fs.Bool("gso", false, "send each batch as UDP GSO sends (segmented before it leaves A, see capacity.go)")
	flows := fs.Int("flows", 1, "send from this many ports, from -bind's on, one batch each in turn (so that SO_REUSEPORT spreads them)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	src, err := netip.ParseAddrPort(*bind)
	if err != nil {
		return err
	}
	dst, err := netip.ParseAddrPort(*to)
	if err != nil {
		return err
	}
	if *flows < 1 || *flows > 64 {
		return fmt.Errorf("-flows must be 1 to 64")
	}
	fds := make([]int, *flows)
	for i := range fds {
		ap := netip.AddrPortFrom(src.Addr(), src.Port()+uint16(i))
		fd, err := bindUDP(ap, unix.SO_SNDBUF, 4<<20, unix.SO_REUSEADDR, 1)
		if err != nil {
			return fmt.Errorf("bind %v: %w", ap, err)
		}
		defer unix.Close(fd)
		fds[i] = fd
	}
	fd := fds[0]

	var payloads [][]byte
	ready := map[string]any{}
	switch *mode {
	case "raw":
		p := make([]byte, *size)
		p[0] = 0x40
		payloads = [][]byte{p}
	case "cids":
		key, err := hex.DecodeString(*cidKey)
		if err != nil {
			return err
		}
		for i := 1; i <= *ncids; i++ {
			cid, err := quicpipe.DeriveCID(key, uint32(i))
			if err != nil {
				return err
			}
			p := make([]byte, *size)
			for j := range p {
				p[j] = byte(rand.Uint32())
			}
			p[0] = 0x40 | p[0]&0x3f // short header, fixed bit set
			copy(p[1:], cid[:])
			payloads = append(payloads, p)
		}
	case "turn":
		pa, err := netip.ParseAddrPort(*peer)
		if err != nil {
			return err
		}
		c := &turnClient{fd: fd, server: dst}
		relayed, err := c.allocate(60 * time.Second)
		if err != nil {
			return err
		}
		if err := c.bindChannel(pa, 30*time.Second); err != nil {
			return err
		}
		ready["relayed"] = relayed.String()
		p := make([]byte, *size)
		p[0] = 0x40
		payloads = [][]byte{channelData(p)}
	default:
		return fmt.Errorf("unknown mode %q", *mode)
	}
	for _, fd := range fds {
		if err := unix.Connect(fd, sockaddr(dst)); err != nil {
			return err
		}
	}
	ready["bytes"] = len(payloads[0])
	say("ready", ready)

	n := *batch
	iovs := make([]unix.Iovec, n)
	hdrs := make([]unix.Mmsghdr, n)
	for i := range hdrs {
		p := payloads[i%len(payloads)]
		iovs[i].Base = &p[0]
		iovs[i].SetLen(len(p))
		hdrs[i].Hdr.Iov = &iovs[i]
		hdrs[i].Hdr.Iovlen = 1
	}
	if *gso {
		// One sendmsg per GSO chunk: the payloads (all the same size) as
		// iovecs, one UDP_SEGMENT control message.
		size := len(payloads[0])
		per := max(1, 65000/(size+8))
		oob := make([]byte, unix.CmsgSpace(2))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
		*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = uint16(size)
		giovs := make([]unix.Iovec, per)
		for i := range giovs {
			p := payloads[i%len(payloads)]
			giovs[i].Base = &p[0]
			giovs[i].SetLen(size)
		}
		gsoMsg = &unix.Msghdr{Iov: &giovs[0], Control: &oob[0]}
		gsoMsg.SetIovlen(per)
		gsoMsg.SetControllen(len(oob))
		gsoPer = per
	}
	var running atomic.Bool
	serveCommands(func(cmd string, a []string) (any, error) {
		switch cmd {
		case "run": // seconds, max datagrams (0: no limit), rate pps (0: flat out)
			if len(a) != 3 {
				return nil, fmt.Errorf("usage: run SECONDS MAX RATE")
			}
			secs, _ := strconv.ParseFloat(a[0], 64)
			maxN, _ := strconv.ParseInt(a[1], 10, 64)
			rate, _ := strconv.ParseFloat(a[2], 64)
			if secs <= 0 || secs > 600 {
				return nil, fmt.Errorf("seconds must be in (0, 600]")
			}
			if maxN <= 0 || maxN > int64(secs*5e6) {
				maxN = int64(secs * 5e6) // far above what one core can send
			}
			if !running.CompareAndSwap(false, true) {
				return nil, fmt.Errorf("already running")
			}
			go func() {
				sent, errs, el := blast(fds, hdrs, time.Duration(secs*float64(time.Second)), maxN, rate)
				running.Store(false)
				say("ev", map[string]any{"sent": sent, "errors": errs, "secs": el.Seconds()})
			}()
			return nil, nil
		}
		return nil, fmt.Errorf("unknown command")
	})
	return nil
}

var (
	gsoMsg *unix.Msghdr // non-nil: send with UDP GSO
	gsoPer int
)

// blast sends batches until d has passed or maxN datagrams are out, pacing
// to rate datagrams per second if rate > 0, from each of fds in turn.
func blast(fds []int, hdrs []unix.Mmsghdr, d time.Duration, maxN int64, rate float64) (sent, errs int64, elapsed time.Duration) {
	start := time.Now()
	end := start.Add(d)
	for turn := 0; ; turn++ {
		fd := fds[turn%len(fds)]
		now := time.Now()
		if !now.Before(end) || sent >= maxN {
			break
		}
		if rate > 0 {
			due := int64(rate * now.Sub(start).Seconds())
			if sent >= due {
				time.Sleep(time.Duration(float64(len(hdrs)) / rate * float64(time.Second)))
				continue
			}
		}
		if gsoMsg != nil {
			_, _, errno := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(gsoMsg)), 0)
			if errno != 0 {
				errs++
				continue
			}
			sent += int64(gsoPer)
			continue
		}
		k := min(int64(len(hdrs)), maxN-sent)
		r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdrs[0])), uintptr(k), 0, 0, 0)
		if errno != 0 {
			// ECONNREFUSED after an ICMP error, ENOBUFS: count and go on.
			errs++
			continue
		}
		sent += int64(r)
	}
	return sent, errs, time.Since(start)
}

package netlab

import (
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Shape describes an emulated link: what tc netem would do, for kernels
// built without it. Zero fields mean no delay and no rate limit.
type Shape struct {
	// Delay is the one-way delay in each direction.
	Delay time.Duration
	// RateMbit is the rate in each direction, in Mbit/s.
	RateMbit int
	// QueueBytes bounds the bytes waiting for the rate limit (the
	// bottleneck's buffer); arriving packets beyond it are dropped. If
	// zero, one bandwidth-delay product of the round trip (2×Delay) is
	// used.
	QueueBytes int
}

// ShapedLink joins a and b with a point-to-point link emulated by this
// process: a TUN interface aIf in a with address aAddr (a host address,
// the peer being bAddr) and bIf in b with bAddr. Packets cross in user
// space, delayed and paced as shape says. The link stops when the test
// ends. Its CPU cost is this process's; measure relative to a baseline
// over the same link.
func (l *Lab) ShapedLink(a *NS, aIf, aAddr string, b *NS, bIf, bAddr string, shape Shape) {
	l.t.Helper()
	ta, err := openTUN(a, aIf)
	if err != nil {
		l.t.Fatalf("netlab: TUN %s in %s: %v", aIf, a.Name, err)
	}
	tb, err := openTUN(b, bIf)
	if err != nil {
		ta.Close()
		l.t.Fatalf("netlab: TUN %s in %s: %v", bIf, b.Name, err)
	}
	for _, side := range []struct {
		ns              *NS
		ifc, addr, peer string
	}{{a, aIf, aAddr, bAddr}, {b, bIf, bAddr, aAddr}} {
		side.ns.Run("ip", "addr", "add", side.addr, "peer", side.peer, "dev", side.ifc)
		side.ns.Run("ip", "link", "set", side.ifc, "up")
	}
	if shape.QueueBytes == 0 && shape.RateMbit > 0 {
		shape.QueueBytes = int(int64(shape.RateMbit) * 1e6 / 8 * int64(2*shape.Delay) / int64(time.Second))
		shape.QueueBytes = max(shape.QueueBytes, 64<<10)
	}
	var wg sync.WaitGroup
	wg.Go(func() { emulate(ta, tb, shape) })
	wg.Go(func() { emulate(tb, ta, shape) })
	l.t.Cleanup(func() {
		ta.Close()
		tb.Close()
		wg.Wait()
	})
}

func openTUN(ns *NS, name string) (*os.File, error) {
	var f *os.File
	err := ns.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF: %w", err)
		}
		f = os.NewFile(uintptr(fd), name) // non-blocking: the runtime poller reads it
		return nil
	})
	return f, err
}

type delayed struct {
	buf *[]byte // from the pool; the packet is its first n bytes
	n   int
	due time.Time
}

// emulate moves packets from in to out until either is closed.
func emulate(in, out *os.File, shape Shape) {
	q := make(chan delayed, 65536)
	pool := sync.Pool{New: func() any { b := make([]byte, 2048); return &b }}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for p := range q {
			if d := time.Until(p.due); d > 20*time.Microsecond {
				time.Sleep(d)
			}
			out.Write((*p.buf)[:p.n])
			pool.Put(p.buf)
		}
	})
	defer close(q)
	var depart time.Time // when the link finishes sending what it holds
	bytesPerSec := float64(shape.RateMbit) * 1e6 / 8
	for {
		buf := pool.Get().(*[]byte)
		n, err := in.Read(*buf)
		if err != nil {
			return
		}
		now := time.Now()
		due := now
		if shape.RateMbit > 0 {
			if depart.Before(now) {
				depart = now
			}
			if backlog := depart.Sub(now).Seconds() * bytesPerSec; backlog > float64(shape.QueueBytes) {
				pool.Put(buf)
				continue // tail drop
			}
			depart = depart.Add(time.Duration(float64(n) / bytesPerSec * float64(time.Second)))
			due = depart
		}
		select {
		case q <- delayed{buf: buf, n: n, due: due.Add(shape.Delay)}:
		default:
			pool.Put(buf)
		}
	}
}

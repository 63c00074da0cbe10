package main

// The delay line: this kernel has no netem (CONFIG_NET_SCH_NETEM is not
// set), so one-way delay is added in userspace, in the router namespace G.
// Policy routing sends every packet that G forwards (arriving on g1, g2 or
// g3) into a TUN device; this role reads each one, holds it for the delay,
// and writes it back into the TUN device, from where G's main routing table
// sends it on. Packets keep their order (the delay is constant), are never
// changed, and each crossing of G costs exactly one delay: A→R, R→B and A→B
// each take one delay per direction. If more than maxQueued packets wait at
// once, new ones are dropped, like a full router queue.

import (
	"flag"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

func init() { roles["delay"] = delayRole }

const delayDev = "qpbdelay"

type delayed struct {
	due time.Time
	b   []byte
}

func delayRole(args []string) error {
	fs := flag.NewFlagSet("delay", flag.ContinueOnError)
	d := fs.Duration("delay", 25*time.Millisecond, "one-way delay per crossing")
	ifaces := fs.String("ifaces", "g1,g2,g3", "interfaces whose forwarded packets are delayed")
	maxQueued := fs.Int("queue", 100000, "packets held at most")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// The delay can change between measurements ("set DURATION").
	var delay atomic.Int64
	delay.Store(int64(*d))
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(delayDev)
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("TUNSETIFF: %w", err)
	}
	cmds := [][]string{
		{"ip", "link", "set", delayDev, "up", "txqueuelen", "10000"},
		{"sysctl", "-q", "-w", "net.ipv4.conf." + delayDev + ".rp_filter=0", "net.ipv4.conf.all.rp_filter=0"},
		{"ip", "route", "add", "default", "dev", delayDev, "table", "100"},
	}
	for i, ifc := range strings.Split(*ifaces, ",") {
		cmds = append(cmds, []string{"ip", "rule", "add", "iif", ifc, "lookup", "100", "pref", fmt.Sprint(100 + i)})
	}
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(c, " "), err, out)
		}
	}

	var (
		mu      sync.Mutex
		cond    = sync.NewCond(&mu)
		queue   []delayed
		dropped int64
		passed  int64
	)
	pool := sync.Pool{New: func() any { return make([]byte, 65536) }}
	go func() { // reader
		runtime.LockOSThread()
		for {
			b := pool.Get().([]byte)
			n, err := unix.Read(fd, b)
			if err != nil {
				if err == unix.EINTR {
					continue
				}
				return
			}
			due := time.Now().Add(time.Duration(delay.Load()))
			mu.Lock()
			if len(queue) >= *maxQueued {
				dropped++
				mu.Unlock()
				pool.Put(b)
				continue
			}
			queue = append(queue, delayed{due: due, b: b[:n]})
			if len(queue) == 1 {
				cond.Signal()
			}
			mu.Unlock()
		}
	}()
	go func() { // writer
		runtime.LockOSThread()
		for {
			mu.Lock()
			for len(queue) == 0 {
				cond.Wait()
			}
			p := queue[0]
			mu.Unlock()
			if w := time.Until(p.due); w > 0 {
				time.Sleep(w)
			}
			mu.Lock()
			queue[0] = delayed{}
			queue = queue[1:]
			passed++
			mu.Unlock()
			unix.Write(fd, p.b)
			pool.Put(p.b[:cap(p.b)])
		}
	}()
	say("ready", nil)
	serveCommands(func(cmd string, a []string) (any, error) {
		if cmd == "set" && len(a) == 1 {
			v, err := time.ParseDuration(a[0])
			if err != nil || v < 0 {
				return nil, fmt.Errorf("set: bad delay %q", a[0])
			}
			delay.Store(int64(v))
			return map[string]string{"delay": v.String()}, nil
		}
		if cmd == "stats" {
			mu.Lock()
			defer mu.Unlock()
			return map[string]int64{"passed": passed, "dropped": dropped, "queued": int64(len(queue))}, nil
		}
		return nil, fmt.Errorf("unknown command")
	})
	unix.Close(fd)
	return nil
}

// startDelay adds the delay line to a relay lab.
func (l *Lab) startDelay(d time.Duration) (*proc, error) {
	return l.startRole("delay", "g", -1, "delay", "-delay", d.String())
}

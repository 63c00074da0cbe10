package main

// The router off the relay's core: the capacity cases "… router off-core".
//
// A veth hands a frame to its peer on the sending CPU. Without a NAPI poll
// on the receiving side, all that G does with a frame the relay sent (the
// receive on g2, the fib lookup, ip_forward, the transmit on g3) and the
// sink's nftables drop in B run in softirq inside the relay's sendmsg, on
// the relay's core, and are charged to the relay process. On real hardware
// the router is another machine.
//
// routerOffCore turns GRO on on g2, which gives a veth a NAPI poll: a frame
// from r0 is queued on g2's ring, and the poll takes it from there. With
// threaded NAPI (/sys/class/net/g2/threaded) that poll is a kernel thread,
// napi/g2-<id>, which is pinned to the generator's CPU (and given the lowest
// real-time priority, see routerOffCore): G's forwarding and the sink then
// run there, beside the generator. UDP GRO forwarding
// (rx-udp-gro-forwarding) and fraglist GRO stay off, so G does not coalesce
// the relay's datagrams: each one is routed and counted at the sink on its
// own (checkOneByOne verifies it).

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// routerOffCore moves G's receive from the relay (g2) into a threaded NAPI
// poll pinned to the generator's CPU. undo turns it off again (the kthread
// stops), and runs at the latest when the lab closes.
func routerOffCore(lab *Lab) (kthread int, undo func(), err error) {
	var once sync.Once
	var pid int
	undo = func() {
		once.Do(func() {
			if err := lab.run("g", "sh", "-c", "echo 0 > /sys/class/net/g2/threaded"); err != nil {
				logf("router off-core: %v", err)
			}
			if err := lab.run("g", "ethtool", "-K", "g2", "gro", "off"); err != nil {
				logf("router off-core: %v", err)
			}
			if err := lab.run("r", "ethtool", "-K", "r0", "tso", "on"); err != nil {
				logf("router off-core: %v", err)
			}
			if pid == 0 {
				return
			}
			// The kthread stops with threaded NAPI off (and with the
			// namespace). Should it outlive both steps, it must not stay
			// pinned.
			for try := 0; try < 20; try++ {
				if _, ok := napiThreads("g2")[pid]; !ok {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
			logf("router off-core: kthread %d still runs after threaded NAPI was turned off: unpinning it", pid)
			if out, err := exec.Command("taskset", "-pc", fmt.Sprintf("0-%d", runtime.NumCPU()-1), fmt.Sprint(pid)).CombinedOutput(); err != nil {
				logf("router off-core: taskset: %v: %s", err, out)
			}
			if out, err := exec.Command("chrt", "-o", "-p", "0", fmt.Sprint(pid)).CombinedOutput(); err != nil {
				logf("router off-core: chrt: %v: %s", err, out)
			}
		})
	}
	lab.onClose(undo)
	if err := lab.run("g", "ethtool", "-K", "g2", "gro", "on", "rx-udp-gro-forwarding", "off", "rx-gro-list", "off"); err != nil {
		undo()
		return 0, nil, fmt.Errorf("GRO on g2: %w", err)
	}
	// A veth queues a frame for its peer's NAPI poll only if the frame
	// could be aggregated there (veth_skb_is_eligible_for_gro): with TSO
	// on the sending side, a UDP socket's frames qualify only if the peer
	// does UDP GRO forwarding or fraglist GRO, which G must not. With TSO
	// off on r0 every frame qualifies. TSO is TCP's: the relay's UDP
	// sends are segmented as before, unless the case turned UDP
	// segmentation offload on (capCase.uso), which is not one of the TSO
	// features: then its GSO frames qualify whole.
	if err := lab.run("r", "ethtool", "-K", "r0", "tso", "off"); err != nil {
		undo()
		return 0, nil, fmt.Errorf("TSO off on r0: %w", err)
	}
	before := napiThreads("g2")
	if err := lab.run("g", "sh", "-c", "echo 1 > /sys/class/net/g2/threaded"); err != nil {
		undo()
		return 0, nil, fmt.Errorf("threaded NAPI on g2: %w", err)
	}
	// The kthread is named after the interface and the NAPI instance's id,
	// which sysfs does not show: ours is the one that was not there before
	// (other labs on the machine may have a g2 of their own).
	var found []int
	for try := 0; try < 20 && len(found) == 0; try++ {
		for p := range napiThreads("g2") {
			if _, ok := before[p]; !ok {
				found = append(found, p)
			}
		}
		if len(found) == 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if len(found) != 1 {
		undo()
		return 0, nil, fmt.Errorf("threaded NAPI on g2: %d new napi/g2-* kthreads, want 1", len(found))
	}
	pid = found[0]
	if out, err := exec.Command("taskset", "-pc", fmt.Sprint(capGenCPU), fmt.Sprint(pid)).CombinedOutput(); err != nil {
		undo()
		return 0, nil, fmt.Errorf("pinning napi kthread %d: %v: %s", pid, err, out)
	}
	// At the default policy the kthread, sharing CPU 0 with the generator
	// and its softirq work, was seen runnable and not running for two
	// seconds at a time while g2's ring overflowed (the relay's datagrams
	// dropped on r0). A router that is another machine is not starved by
	// the generator: run the poll at the lowest real-time priority, as
	// threaded NAPI is often run. It sleeps when g2's ring is empty, so the
	// generator gets the rest of the core.
	if out, err := exec.Command("chrt", "-f", "-p", "1", fmt.Sprint(pid)).CombinedOutput(); err != nil {
		undo()
		return 0, nil, fmt.Errorf("napi kthread %d to SCHED_FIFO 1: %v: %s", pid, err, out)
	}
	if got := cpusAllowed(pid); got != fmt.Sprint(capGenCPU) {
		undo()
		return 0, nil, fmt.Errorf("napi kthread %d runs on CPUs %q after pinning, want %d", pid, got, capGenCPU)
	}
	logf("  router off-core: %s (pid %d) pinned to CPU %d, SCHED_FIFO 1", napiThreads("g2")[pid], pid, capGenCPU)
	return pid, undo, nil
}

// napiThreads returns the kernel threads named napi/DEV-*, pid to name.
func napiThreads(dev string) map[int]string {
	m := map[int]string{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return m
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i, j := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if i < 0 || j < i {
			continue
		}
		name := s[i+1 : j]
		f := strings.Fields(s[j+1:])
		if len(f) < 7 || !strings.HasPrefix(name, "napi/"+dev+"-") {
			continue
		}
		if flags, _ := strconv.ParseUint(f[6], 10, 64); flags&pfKthread != 0 {
			m[pid] = name
		}
	}
	return m
}

// cpusAllowed returns the CPU list process pid may run on.
func cpusAllowed(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// checkOneByOne verifies, at a low rate, that every datagram the relay
// sends reaches the sink as a packet of its own: none coalesced in G (the
// sink's counter of packets longer than one datagram stays at zero), none
// missing (the sink counts what g2 received from the relay, which counts
// frames before GRO). The generator's count is reported beside them; a
// relay that is preempted may drop some of them at its socket, which is
// not G's doing.
//
// With uso (segmentation offload on r0) a relay's GSO send is one frame on
// g2 and one super-packet at the sink: then every frame G received must
// reach the sink as it was, single or super-packet, none merged or split,
// and the datagrams recovered from the sink's bytes are reported.
func checkOneByOne(lab *Lab, res *Results, gen *proc, name string, kthread int, uso bool) error {
	const rate, secs = 20000.0, 1.0
	lab.waitQuiet(0.1, 10*time.Second)
	k0, err := threadRunTime(kthread)
	if err != nil {
		return err
	}
	g0, err := readIfPackets(lab, "g", "g2", "rx_packets")
	if err != nil {
		return err
	}
	c0, err := lab.sinkCounters()
	if err != nil {
		return err
	}
	if err := gen.call(10*time.Second, nil, "run", fmt.Sprintf("%.2f", secs), 0, rate); err != nil {
		return err
	}
	var ev struct{ Sent int64 }
	if err := gen.event(time.Duration(secs+30)*time.Second, &ev); err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond) // what is still on its way
	c1, err := lab.sinkCounters()
	if err != nil {
		return err
	}
	g1, err := readIfPackets(lab, "g", "g2", "rx_packets")
	if err != nil {
		return err
	}
	k1, err := threadRunTime(kthread)
	if err != nil {
		return err
	}
	single, coalesced, fromRelay := c1.relayed-c0.relayed, c1.gso-c0.gso, g1-g0
	inSuper := (c1.gsoBytes - c0.gsoBytes - 28*coalesced) / payloadSize
	msg := fmt.Sprintf("%s: at %.0f datagrams/s offered (%d sent), G received %.0f frames from the relay, the sink counted %.0f single datagrams and %.0f coalesced packets (%.0f datagrams); G's NAPI kthread used %.1f ms of CPU",
		name, rate, ev.Sent, fromRelay, single, coalesced, inSuper, (k1-k0)*1000)
	logf("  %s", msg)
	if k1 == k0 {
		return fmt.Errorf("G's NAPI kthread did no work: the relay's frames do not reach g2's NAPI poll: %s", msg)
	}
	// A few frames on g2 may be the relay's other traffic (ARP, its own
	// replies).
	if uso {
		// Every frame G received reaches the sink as it was (a few may be
		// the relay's ARP: 4 of 2,659 were), and the datagrams sent are
		// in them (a relay preempted under load may drop a few at its
		// socket).
		frames := single + coalesced
		if frames > fromRelay || frames < fromRelay-10 || single+inSuper < 0.95*float64(ev.Sent) {
			return fmt.Errorf("the relay's frames not forwarded as they were through G: %s", msg)
		}
		res.note("%s", msg)
		return nil
	}
	if coalesced != 0 || single > fromRelay || single < fromRelay-max(10, fromRelay/1000) || single < 0.5*float64(ev.Sent) {
		return fmt.Errorf("datagrams not forwarded one by one through G: %s", msg)
	}
	res.note("%s", msg)
	return nil
}

// readIfPackets reads a counter of interface dev in namespace ns.
func readIfPackets(lab *Lab, ns, dev, counter string) (float64, error) {
	out, err := lab.output(ns, "cat", "/sys/class/net/"+dev+"/statistics/"+counter)
	if err != nil {
		return 0, err
	}
	return strconv.ParseFloat(strings.TrimSpace(out), 64)
}

// lostAfterRelay counts datagrams dropped after the relay's send: on r0
// (g2's ring full: a veth with a NAPI poll queues frames for it and drops
// what does not fit) and on g2; and at the per-CPU backlogs, where frames
// to a veth without a NAPI poll queue (the generator's to g1 before the
// relay, the router's to b0 after it; machine-wide, so it does not tell
// the sides apart).
type lostAfterRelay struct{ r0, g2, backlog float64 }

func readLostAfterRelay(lab *Lab) lostAfterRelay {
	var l lostAfterRelay
	read := func(ns, dev, counter string) float64 {
		v, _ := readIfPackets(lab, ns, dev, counter)
		return v
	}
	l.r0, l.g2 = read("r", "r0", "tx_dropped"), read("g", "g2", "rx_dropped")
	if b, err := os.ReadFile("/proc/net/softnet_stat"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 1 {
				v, _ := strconv.ParseUint(f[1], 16, 64)
				l.backlog += float64(v)
			}
		}
	}
	return l
}

func (l lostAfterRelay) sub(o lostAfterRelay) lostAfterRelay {
	return lostAfterRelay{l.r0 - o.r0, l.g2 - o.g2, l.backlog - o.backlog}
}

func (l lostAfterRelay) String() string {
	return fmt.Sprintf("r0 tx_dropped %.0f, g2 rx_dropped %.0f, backlog drops (either side of the relay) %.0f", l.r0, l.g2, l.backlog)
}

package main

// Comparison 1: relay forwarding capacity.
//
// The load generator in A (pinned to CPU 0) sends 1200-byte datagrams as fast
// as it can to the relay in R (pinned to CPU 1), which forwards them to the
// sink port in B, where nftables counts and drops them (sink.go). The same
// payload size reaches the sink in every case: Quicpipe relays forward QUIC
// packets unchanged; the TURN servers strip the 4-byte ChannelData header of
// a bound channel; the XDP reflector rewrites addresses only.
//
// Per measurement window: forwarded datagrams (at the sink), the relay
// process's CPU time (/proc/PID/stat: user + system, which includes the
// softirq work done in its system calls), busy time of every CPU
// (/proc/stat) and, for the Quicpipe relay, its heap allocations.

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	capRelayCPU = 1
	capGenCPU   = 0
	relayPort   = 4433
	turnPort    = 3478
)

type capCase struct {
	name     string
	kind     string // quicpipe, quicpipe-xdp, coturn, pionturn, reflector
	baseline bool
	xdp      bool // forwarding happens in the kernel: no relay process CPU
	// fleetRegs, for kind quicpipe-fleet, is how many registrations of 64
	// CIDs another member of the relay's fleet writes before the case is
	// measured (fleet.go).
	fleetRegs int
	// port is the relay's port, if not relayPort.
	port int
	// gro turns GRO on on the relay's interface (r0): the generator's
	// bursts, which cross the links one datagram at a time, reach a socket
	// with UDP_GRO coalesced again, as a NIC's GRO hands them over.
	gro bool
	// readers is the relay's RelayConfig.Readers (0: its default, one per
	// CPU the process may use); flows the generator's source ports. With
	// both cores, the relay process is not pinned (it shares CPU 0 with
	// the generator).
	readers, flows int
	bothCores      bool
	// tunnel, if not empty, is the TCP address on which the Quicpipe
	// relay also serves its TLS/WebSocket tunnel (RelayConfig.Tunnel).
	tunnel string
	// offCore moves the router's work on what the relay sends off the
	// relay's core (offcore.go): G's interface from the relay (g2) gets a
	// threaded NAPI poll, its kthread pinned to the generator's CPU, so
	// that routing each datagram through G and dropping it at the sink no
	// longer runs in the relay's system calls, as with a router that is
	// another machine.
	offCore bool
	// uso turns UDP segmentation offload on on the relay's interface (r0
	// tx-udp-segmentation), as on a NIC that offers it: a relay's GSO
	// send leaves its namespace as one frame, not segmented in software
	// on the relay's core. G forwards it whole (with the router
	// off-core, on the generator's core) and the sink recovers its
	// datagrams from its bytes (sink.go). A relay that sends one
	// datagram per system call, as coturn does, sends the same frames
	// with it or without.
	uso bool
}

// setLinks sets the offloads of the relay's interface (r0) and the
// generator's (a0) for the case.
func (c capCase) setLinks(lab *Lab) error {
	onOff := func(b bool) string {
		if b {
			return "on"
		}
		return "off"
	}
	// GRO on a veth coalesces only datagrams whose checksum is known good,
	// as a NIC's are: with GRO, the generator's interface computes
	// checksums in software (a0 "tx off"), so that the datagrams reach r0
	// as a NIC hands them over. Otherwise checksums stay offloaded
	// (partial), as before.
	if err := lab.run("r", "ethtool", "-K", "r0", "gro", onOff(c.gro), "tx-udp-segmentation", onOff(c.uso)); err != nil {
		return fmt.Errorf("GRO %s, segmentation offload %s on r0: %w", onOff(c.gro), onOff(c.uso), err)
	}
	if err := lab.run("a", "ethtool", "-K", "a0", "tx", onOff(!c.gro)); err != nil {
		return fmt.Errorf("checksum offload %s on a0: %w", onOff(!c.gro), err)
	}
	return nil
}

// relayCPU returns the CPU the case's relay is pinned to, or -1.
func (c capCase) relayCPU() int {
	if c.bothCores {
		return -1
	}
	return capRelayCPU
}

var capCases = []capCase{
	{name: "Quicpipe relay (userspace)", kind: "quicpipe"},
	{name: "Quicpipe relay (XDP)", kind: "quicpipe-xdp", xdp: true},
	{name: "coturn", kind: "coturn", baseline: true},
	{name: "pion/turn", kind: "pionturn", baseline: true},
	{name: "bare XDP_TX reflector", kind: "reflector", baseline: true, xdp: true},
	{name: "reference: recvmmsg+sendmmsg loop", kind: "bare-sendmmsg"},
	{name: "reference: recvmmsg+GSO loop", kind: "bare-gso"},
	{name: "Quicpipe relay (userspace, GRO link)", kind: "quicpipe", gro: true},
	{name: "coturn (GRO link)", kind: "coturn", baseline: true, gro: true},
	{name: "Quicpipe relay (1 reader, 8 flows)", kind: "quicpipe", readers: 1, flows: 8},
	{name: "Quicpipe relay (2 readers, 8 flows, both cores)", kind: "quicpipe", readers: 2, flows: 8, bothCores: true},
	{name: "Quicpipe relay (userspace, router off-core)", kind: "quicpipe", offCore: true},
	{name: "coturn (router off-core)", kind: "coturn", baseline: true, offCore: true},
	{name: "Quicpipe relay (userspace, GRO link, router off-core)", kind: "quicpipe", gro: true, offCore: true},
	{name: "coturn (GRO link, router off-core)", kind: "coturn", baseline: true, gro: true, offCore: true},
	{name: "Quicpipe relay (userspace, GRO+USO link, router off-core)", kind: "quicpipe", gro: true, uso: true, offCore: true},
	{name: "coturn (GRO+USO link, router off-core)", kind: "coturn", baseline: true, gro: true, uso: true, offCore: true},
}

// caseSelected reports whether the -cases filter selects c: a
// comma-separated list of substrings of case names, or exact names
// prefixed with "=".
func caseSelected(c capCase) bool {
	if caseFilter == "" {
		return true
	}
	for _, f := range strings.Split(caseFilter, ",") {
		if f, exact := strings.CutPrefix(f, "="); exact && c.name == f || !exact && strings.Contains(c.name, f) {
			return true
		}
	}
	return false
}

// capServer is whatever forwards in one case.
type capServer struct {
	relay   *proc // the process whose CPU counts as the relay's (nil for the reflector)
	genArgs []string
	// registerGen, if not nil, registers the generator's address with the
	// relay before it starts: a Quicpipe relay forwards only datagrams from
	// the addresses of live registrations.
	registerGen func(bind string, flow int) error
	stats       func() (relayStats, bool)
	stop        func()
	inodes      map[uint64]bool // the lab's namespaces
}

type capSample struct {
	at       time.Time
	fwd      float64
	frames   float64 // packets at the sink: single datagrams and super-packets
	cpu      cpuTimes
	lab      labCPU
	relayCPU float64
	mallocs  uint64
	hasAlloc bool
}

var cidKeyHex = hex.EncodeToString([]byte("quicpipe bench CID key, 32 byte"))

// genCIDKeyHex is the key the generator registers its own address with.
var genCIDKeyHex = hex.EncodeToString([]byte("quicpipe bench generator CID key"))

// genCIDKeyHexFlow is the key the generator registers the address of its
// flow-th source port with (flow 0: genCIDKeyHex): one registration per
// port, each a live target.
func genCIDKeyHexFlow(flow int) string {
	k := []byte("quicpipe bench generator CID key")
	k[len(k)-1] += byte(flow)
	return hex.EncodeToString(k)
}

// newCapacityLab returns the relay lab of the capacity measurements.
// Datagrams sent with UDP GSO (the generator's, and a relay's that uses it)
// are segmented in software before they leave their namespace, as with a
// NIC without segmentation offload: every datagram crosses the links, the
// router and the relay's socket on its own (the USO cases turn the offload
// on for the relay's interface, capCase.uso).
func newCapacityLab() (*Lab, error) {
	lab, err := newRelayLab()
	if err != nil {
		return nil, err
	}
	for _, p := range [][2]string{{"a", "a0"}, {"r", "r0"}} {
		if err := lab.run(p[0], "ethtool", "-K", p[1], "tx-udp-segmentation", "off"); err != nil {
			lab.Close()
			return nil, err
		}
	}
	return lab, nil
}

func runCapacity(ctx context.Context, res *Results, opt options, outDir string) error {
	lab, err := newCapacityLab()
	if err != nil {
		return err
	}
	defer lab.Close()
	tmp, err := tempDir(lab, "capacity-")
	if err != nil {
		return err
	}

	pps := res.figure("capacity_pps", "capacity", "Datagrams forwarded per second (relay on one core, one load-generator core)",
		"veth, 1200-byte datagrams", "datagrams/s", true)
	perCPU := res.figure("capacity_per_cpu", "capacity", "Datagrams forwarded per CPU-second of the relay process",
		"veth, 1200-byte datagrams", "datagrams per relay CPU-second", true)
	machine := res.figure("capacity_machine_cpu", "capacity", "Machine CPU time per forwarded datagram (both cores: generator, router, relay, sink)",
		"veth, 1200-byte datagrams", "ns per datagram", false)
	relayCore := res.figure("capacity_relay_core", "capacity", "Busy share of the relay's core (CPU 1)",
		"veth, 1200-byte datagrams", "% of CPU 1", false)
	allocs := res.figure("capacity_allocs", "capacity", "Heap allocations per forwarded datagram (Quicpipe relay, runtime.MemStats)",
		"veth, 1200-byte datagrams", "allocations per datagram", false)
	foreign := res.figure("capacity_foreign", "capacity", "CPU used by other processes on the machine during the windows",
		"veth, 1200-byte datagrams", "% of one CPU", false)
	napiShare := res.figure("capacity_offcore_napi", "capacity", "CPU of G's NAPI kthread on the generator's core (router off-core cases)",
		"veth, 1200-byte datagrams", "% of one CPU", false)
	napiShare.NoRatios = true
	napiShare.Explanation = "The router's work on what the relay sends, moved off the relay's core (offcore.go): G's receive from the relay, routing, and the sink's drop, in a threaded NAPI poll pinned to CPU 0. Measured over the generator's whole run of each window (a little longer than the window)."
	foreign.Explanation = "Busy time in /proc/stat not accounted to the lab's processes or kernel threads: other work on a shared machine. Windows where it exceeded 10% were measured again (at most twice)."
	relayCore.NoRatios, allocs.NoRatios, foreign.NoRatios = true, true, true
	pps.Explanation = "Flat out: the generator sends as fast as one core allows. Where the relay's core stays below 100% the generator, not the relay, is the limit (see the relay-core figure)."
	perCPU.Explanation = "Forwarded datagrams divided by the relay process's user+system CPU time (including the kernel's softirq work done inside its system calls). Only meaningful for userspace relays."
	machine.Explanation = "CPU time of the lab's processes and of kernel threads on both cores (other processes on the machine left out, see below), divided by forwarded datagrams. It includes the generator, the router namespace, the sink's nftables drop and the relay: the difference between cases is the cost of forwarding. With XDP the generator's core does all of it and is saturated."

	for i, c := range capCases {
		if !caseSelected(c) {
			continue
		}
		logf("capacity: %s", c.name)
		if err := c.setLinks(lab); err != nil {
			res.missing("capacity: "+c.name, err)
			continue
		}
		undoOffCore, kthread := func() {}, 0
		if c.offCore {
			pid, undo, err := routerOffCore(lab)
			if err != nil {
				res.missing("capacity: "+c.name, err)
				continue
			}
			undoOffCore, kthread = undo, pid
		}
		srv, err := startCapServer(lab, c, tmp, false)
		if err != nil {
			undoOffCore()
			res.missing("capacity: "+c.name, err)
			continue
		}
		err = func() error {
			defer srv.stop()
			gen, stop, err := startCapGen(lab, srv, 7000+i, max(c.flows, 1), "-gso")
			if err != nil {
				return err
			}
			defer stop()
			// Warm up: heaps grow, caches fill, neighbours resolve.
			if _, err := capWindow(lab, gen, srv, 0.5, 0); err != nil {
				return err
			}
			if c.offCore {
				if err := checkOneByOne(lab, res, gen, c.name, kthread, c.uso); err != nil {
					return err
				}
			}
			for rep := 0; rep < opt.reps; rep++ {
				var d0 lostAfterRelay
				var k0 float64
				var t0 time.Time
				before := func() {
					if c.offCore {
						d0, t0 = readLostAfterRelay(lab), time.Now()
						k0, _ = threadRunTime(kthread)
					}
				}
				m, err := steadyWindow(lab, gen, srv, opt.capWindow, true, before)
				if err != nil {
					return err
				}
				if c.offCore {
					k1, _ := threadRunTime(kthread)
					// Over the generator's whole run, not only the
					// measured window: an approximation.
					m.kthread = (k1 - k0) / time.Since(t0).Seconds()
					logf("  lost after the relay's send: %s; G's NAPI kthread %.0f%% of CPU %d",
						readLostAfterRelay(lab).sub(d0), m.kthread*100, capGenCPU)
				}
				foreign.add(c.name, c.baseline, m.foreign/m.secs*100)
				if m.fwd < 1000 {
					return fmt.Errorf("only %.0f datagrams reached the sink in %.1fs (offered %.0f/s)", m.fwd, m.secs, m.offered)
				}
				pps.add(c.name, c.baseline, m.fwd/m.secs)
				machine.add(c.name, c.baseline, m.machineCPU/m.fwd*1e9)
				relayCore.add(c.name, c.baseline, m.core[capRelayCPU]/m.secs*100)
				if c.offCore {
					napiShare.add(c.name, c.baseline, m.kthread*100)
				}
				if !c.xdp {
					perCPU.add(c.name, c.baseline, m.fwd/m.relayCPU)
				}
				if m.hasAlloc && !c.xdp {
					allocs.add(c.name, c.baseline, float64(m.mallocs)/m.fwd)
				}
				logf("  %-28s %9.0f/s  relay CPU %5.1f%%  %6.0f/relay-CPU-s  machine %5.0f ns/datagram  offered %9.0f/s  CPU0 %3.0f%% CPU1 %3.0f%% foreign %3.0f%%",
					c.name, m.fwd/m.secs, m.relayCPU/m.secs*100, m.fwd/m.relayCPU, m.machineCPU/m.fwd*1e9, m.offered,
					m.core[capGenCPU]/m.secs*100, m.core[capRelayCPU]/m.secs*100, m.foreign/m.secs*100)
			}
			if opt.profile && (c.kind == "quicpipe" || c.kind == "coturn") {
				if err := profileCase(lab, res, gen, srv, c, 2, outDir, tmp); err != nil {
					res.missing("capacity: profile of "+c.name, err)
				}
			}
			return nil
		}()
		undoOffCore()
		if err != nil {
			res.missing("capacity: "+c.name, err)
		}
	}
	runBursts(lab, res, opt, tmp)
	if noInstructions {
		return nil
	}
	if err := runInstructions(lab, res, opt, tmp); err != nil {
		res.missing("capacity: instructions per datagram", err)
	}
	return nil
}

type capMeasure struct {
	secs, fwd, relayCPU, machineCPU, offered float64
	frames                                   float64       // packets at the sink (a super-packet is one)
	rawCPU, foreign                          float64       // all of /proc/stat; other processes
	kthread                                  float64       // router off-core: CPUs used by G's NAPI kthread
	late                                     time.Duration // a sample's reads took this long: the window is not valid
	core                                     []float64
	mallocs                                  uint64
	hasAlloc                                 bool
}

// steadyWindow measures one window of secs. With quiet it first waits up to
// 20 s for the machine to be quiet, and measures again (three tries at
// most) when other processes used more than a tenth of a CPU during the
// window or its counters were read late (a third late window is an
// error). Without quiet (smoke mode: figures, no timing) it measures once
// and only logs a late window. before, if not nil, runs before each try.
func steadyWindow(lab *Lab, gen *proc, srv *capServer, secs float64, quiet bool, before func()) (capMeasure, error) {
	for try := 0; ; try++ {
		if quiet {
			if f := lab.waitQuiet(0.1, 20*time.Second); f >= 0.1 {
				logf("  the machine is busy: other processes use %.2f CPUs", f)
			}
		}
		if before != nil {
			before()
		}
		m, err := capWindow(lab, gen, srv, secs, 0)
		if err != nil || !quiet {
			if err == nil && m.late > 0 {
				logf("  reading the window's counters took %v: the window is not valid", m.late.Round(time.Millisecond))
			}
			return m, err
		}
		if m.late > 0 {
			if try == 2 {
				return m, fmt.Errorf("reading the window's counters took %v three times", m.late.Round(time.Millisecond))
			}
			logf("  reading the window's counters took %v: measuring again", m.late.Round(time.Millisecond))
			continue
		}
		if m.foreign/m.secs < 0.1 || try == 2 {
			return m, nil
		}
		logf("  other processes used %.2f CPUs during the window: measuring again", m.foreign/m.secs)
	}
}

// capWindow runs the generator flat out (or at rate) and measures a window
// of secs seconds in the middle of its run.
func capWindow(lab *Lab, gen *proc, srv *capServer, secs, rate float64) (capMeasure, error) {
	const lead = 0.4
	if err := gen.call(10*time.Second, nil, "run", fmt.Sprintf("%.2f", secs+2*lead), 0, rate); err != nil {
		return capMeasure{}, err
	}
	time.Sleep(time.Duration(lead * float64(time.Second)))
	t0 := time.Now()
	s0, err := capTake(lab, srv)
	if err != nil {
		return capMeasure{}, err
	}
	time.Sleep(time.Duration(secs * float64(time.Second)))
	t1 := time.Now()
	s1, err := capTake(lab, srv)
	if err != nil {
		return capMeasure{}, err
	}
	var ev struct {
		Sent int64
		Secs float64
	}
	if err := gen.event(time.Duration(secs+30)*time.Second, &ev); err != nil {
		return capMeasure{}, err
	}
	d := s1.cpu.sub(s0.cpu)
	labCPU := s1.lab.sub(s0.lab)
	m := capMeasure{
		secs:       s1.at.Sub(s0.at).Seconds(),
		fwd:        s1.fwd - s0.fwd,
		frames:     s1.frames - s0.frames,
		relayCPU:   s1.relayCPU - s0.relayCPU,
		machineCPU: labCPU,
		rawCPU:     d.total,
		foreign:    max(d.total-labCPU, 0),
		core:       d.per,
		offered:    float64(ev.Sent) / ev.Secs,
	}
	if s0.hasAlloc && s1.hasAlloc {
		m.mallocs, m.hasAlloc = s1.mallocs-s0.mallocs, true
	}
	// A sample reads the sink's counter (an nft process) before the CPU
	// times. On a saturated machine that process may wait so long that
	// the CPU times are read after the generator stopped: the window then
	// counts datagrams forwarded outside it (seen once: 1% CPU for 123k
	// datagrams a second).
	if d0, d1 := s0.at.Sub(t0), s1.at.Sub(t1); max(d0, d1) > time.Duration(lead/2*float64(time.Second)) {
		m.late = max(d0, d1)
	}
	return m, nil
}

func capTake(lab *Lab, srv *capServer) (capSample, error) {
	var s capSample
	var err error
	// The sink's counter first and last: the nft process it takes to read
	// it runs outside the window of the CPU readings.
	c, err := lab.sinkCounters()
	if err != nil {
		return s, err
	}
	s.fwd, s.frames = c.datagrams(), c.relayed+c.gso
	if srv.stats != nil {
		if st, ok := srv.stats(); ok {
			s.mallocs, s.hasAlloc = st.Mallocs, true
		}
	}
	s.at = time.Now()
	if s.cpu, err = readCPUTimes(); err != nil {
		return s, err
	}
	s.lab = readLabCPU(srv.inodes)
	if srv.relay != nil {
		if s.relayCPU, err = procCPU(srv.relay.pid()); err != nil {
			return s, err
		}
	}
	return s, nil
}

// startCapGen starts the generator on A, bound to port, sending at srv, and
// turns the sink on. stop undoes both.
func startCapGen(lab *Lab, srv *capServer, port, flows int, extra ...string) (gen *proc, stop func(), err error) {
	bind := fmt.Sprintf("%s:%d", addrA, port)
	if srv.registerGen != nil {
		for i := range flows {
			if err := srv.registerGen(fmt.Sprintf("%s:%d", addrA, port+i), i); err != nil {
				return nil, nil, fmt.Errorf("registering the generator: %w", err)
			}
		}
	}
	genArgs := append([]string{"-bind", bind, "-flows", fmt.Sprint(flows)}, srv.genArgs...)
	gen, err = lab.startRole("generator", "a", capGenCPU, "gen", append(genArgs, extra...)...)
	if err != nil {
		return nil, nil, err
	}
	if err := lab.sinkOn(); err != nil {
		gen.stop()
		return nil, nil, err
	}
	return gen, func() { lab.sinkOff(); gen.stop() }, nil
}

// startCapServer starts the forwarder of case c in R, under callgrind if cg
// is not empty (the callgrind output file).
func startCapServer(lab *Lab, c capCase, tmp string, valgrind bool) (*capServer, error) {
	var procs []*proc
	srv := &capServer{inodes: lab.nsInodes()}
	srv.stop = func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
	}
	fail := func(err error) (*capServer, error) {
		srv.stop()
		return nil, err
	}
	prefix := func(argv ...string) []string {
		if !valgrind {
			return argv
		}
		// Go's asynchronous preemption signals trip an assertion in
		// callgrind's signal handling: turn them off under valgrind. Since
		// Go 1.26 the runtime reads the clock with RDTSCP where CPUID
		// offers it, which valgrind 3.19 reports but cannot execute
		// (SIGILL): make the runtime use RDTSC instead.
		return append([]string{"env", "GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off", "valgrind", "--tool=callgrind", "--vgdb=yes",
			"--callgrind-out-file=" + filepath.Join(tmp, "callgrind.%p.out")}, argv...)
	}
	relayAddr := fmt.Sprintf("%s:%d", addrR, relayPort)
	natsAddr := memberNATS // a fleet member's NATS node, in R
	if c.port != 0 {
		relayAddr = fmt.Sprintf("%s:%d", addrR, c.port)
		natsAddr = fmt.Sprintf("127.0.0.1:%d", 4222+c.port-relayPort)
	}
	readyTimeout := 60 * time.Second
	if valgrind {
		readyTimeout = 180 * time.Second
	}
	startRole := func(name, ns string, cpu int, role string, args ...string) (*proc, error) {
		argv := prefix(append([]string{selfExe, "-role", role}, args...)...)
		p, err := lab.start(name, ns, cpu, argv...)
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
		if _, err := p.expect("ready", readyTimeout); err != nil {
			return nil, err
		}
		return p, nil
	}
	switch c.kind {
	case "quicpipe", "quicpipe-xdp", "quicpipe-fleet", "quicpipe-bigtable":
		args := []string{"-listen", relayAddr, "-readers", fmt.Sprint(c.readers)}
		if c.tunnel != "" {
			args = append(args, "-tunnel", c.tunnel)
		}
		if c.kind == "quicpipe-fleet" {
			dir, err := os.MkdirTemp(tmp, "nats-")
			if err != nil {
				return fail(err)
			}
			args = append(args, "-big", "-fleet", dir, "-fleet-nats", natsAddr)
		}
		if c.kind == "quicpipe-bigtable" {
			args = append(args, "-big")
		}
		if c.kind == "quicpipe-xdp" {
			if _, err := startRole("xdp-pass", "g", -1, "xdpprog", "-kind", "pass", "-iface", "g2"); err != nil {
				return fail(err)
			}
			args = append(args, "-xdp", "r0", "-xdpmode", "native")
		}
		r, err := startRole("quicpipe-relay", "r", c.relayCPU(), "relay", args...)
		if err != nil {
			return fail(err)
		}
		srv.relay = r
		srv.stats = func() (relayStats, bool) {
			var st relayStats
			return st, r.call(10*time.Second, &st, "stats") == nil
		}
		if c.kind == "quicpipe-xdp" {
			srv.relay = nil // the relay process does not forward; the kernel does
		}
		if c.kind == "quicpipe-bigtable" {
			if err := r.call(600*time.Second, nil, "applyremote", c.fleetRegs); err != nil {
				return fail(err)
			}
		}
		if c.kind == "quicpipe-fleet" && c.fleetRegs > 0 {
			if err := loadFleet(r, func(args ...string) (*proc, error) {
				return startRole("fleet-loader", "r", -1, "fleetload", args...)
			}, "nats://"+natsAddr, c.fleetRegs, "10.77.128.1"); err != nil {
				return fail(err)
			}
		}
		// Register the sink's CIDs through the relay's API, from the sink's
		// own address, then kill the registrar so that nobody reads them.
		reg, err := lab.startRole("registrar", "b", capGenCPU, "registrar",
			"-relay", relayAddr, "-relaykey", hex.EncodeToString(pub(benchKey("relay"))),
			"-bind", fmt.Sprintf("%s:%d", addrB, sinkPort), "-cidkey", cidKeyHex)
		if err != nil {
			return fail(fmt.Errorf("registering the sink: %w", err))
		}
		reg.kill()
		// The generator plays a registered peer: register its address the
		// same way, with a key of its own, before it binds that port.
		srv.registerGen = func(bind string, flow int) error {
			reg, err := lab.startRole("registrar-gen", "a", capGenCPU, "registrar",
				"-relay", relayAddr, "-relaykey", hex.EncodeToString(pub(benchKey("relay"))),
				"-bind", bind, "-cidkey", genCIDKeyHexFlow(flow))
			if err != nil {
				return err
			}
			reg.kill()
			return nil
		}
		srv.genArgs = []string{"-to", relayAddr, "-mode", "cids", "-cidkey", cidKeyHex, "-ncids", "64"}
	case "coturn":
		if err := haveCoturn(); err != nil {
			return fail(err)
		}
		dir, err := os.MkdirTemp(tmp, "coturn-")
		if err != nil {
			return fail(err)
		}
		conf, err := coturnConfig(dir, addrR, coturnThreads)
		if err != nil {
			return fail(err)
		}
		p, err := lab.start("coturn", "r", capRelayCPU, prefix("turnserver", "-c", conf)...)
		if err != nil {
			return fail(err)
		}
		procs = append(procs, p)
		srv.relay = p
		srv.genArgs = []string{"-to", fmt.Sprintf("%s:%d", addrR, turnPort), "-mode", "turn",
			"-peer", fmt.Sprintf("%s:%d", addrB, sinkPort)}
	case "pionturn":
		p, err := startRole("pion-turn", "r", capRelayCPU, "pionturn",
			"-listen", fmt.Sprintf("%s:%d", addrR, turnPort), "-relayip", addrR)
		if err != nil {
			return fail(err)
		}
		srv.relay = p
		srv.genArgs = []string{"-to", fmt.Sprintf("%s:%d", addrR, turnPort), "-mode", "turn",
			"-peer", fmt.Sprintf("%s:%d", addrB, sinkPort)}
	case "bare-sendmmsg", "bare-gso":
		args := []string{"-listen", relayAddr, "-to", fmt.Sprintf("%s:%d", addrB, sinkPort)}
		if c.kind == "bare-gso" {
			args = append(args, "-gso")
		}
		p, err := startRole("bare-loop", "r", capRelayCPU, "bareloop", args...)
		if err != nil {
			return fail(err)
		}
		srv.relay = p
		srv.genArgs = []string{"-to", relayAddr, "-mode", "raw"}
	case "reflector":
		if _, err := startRole("xdp-pass", "g", -1, "xdpprog", "-kind", "pass", "-iface", "g2"); err != nil {
			return fail(err)
		}
		// The reflector's checksum patch is computed for the generator's
		// address, which depends on the case's index: pass it as "from".
		idx := 0
		for i, cc := range capCases {
			if cc.kind == c.kind {
				idx = i
			}
		}
		if _, err := startRole("xdp-reflector", "r", -1, "xdpprog", "-kind", "reflector", "-iface", "r0",
			"-from", fmt.Sprintf("%s:%d", addrA, 7000+idx), "-via", relayAddr,
			"-to", fmt.Sprintf("%s:%d", addrB, sinkPort)); err != nil {
			return fail(err)
		}
		srv.genArgs = []string{"-to", relayAddr, "-mode", "raw"}
	default:
		return fail(fmt.Errorf("unknown case %q", c.kind))
	}
	return srv, nil
}

var coturnThreads = 0 // see the -coturn-threads flag

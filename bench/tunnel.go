package main

// Comparison 6: the relay's TLS/WebSocket tunnel (issue 16,
// docs/decisions/0025-tunnel.md) beside UDP, in one run.
//
//   - Pipes on the shaped link of the bulk comparison (tbf on every link,
//     the delay line in G): one relay in R serving UDP and its tunnel, and
//     three pairs of Quicpipe peers through it, direct path off: both on
//     UDP (Config.Tunnel TunnelOff, the baseline), the dialer tunnelled
//     (TunnelOnly) and the accepter on UDP, and both tunnelled. Per pair,
//     setup time as the setup comparison defines it (DialMailbox to the
//     first byte at the accepter, the dialer registered beforehand), the
//     dialer's registration time (NewDialer: for a tunnel, TCP, TLS and the
//     WebSocket upgrade before the HTTP/3 handshake and the registration),
//     and bulk throughput of one stream from the dialer as the bulk
//     comparison measures it, with the relay process's CPU per gigabyte.
//   - Relay CPU per forwarded datagram, in the capacity lab and harness
//     (capacity.go): two relays at once, pinned to the relay's core, one
//     without a tunnel and one with RelayConfig.Tunnel set; the UDP
//     generator flat out at each, and a generator that writes the same
//     datagrams into the second relay's tunnel (tunnelrole.go) flat out.
//     The sink's CIDs are registered with each relay as in the capacity
//     cases (a registrar on the sink's socket, killed), each generator
//     registers its own source (the tunnel generator from inside its
//     tunnel). The windows go to the three in turn.
//   - The relay's memory per idle tunnel: heap, goroutine stacks and RSS
//     of a fresh relay before and after N tunnels are opened to it.

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Cases of the tunnel comparison, by name.
const (
	tunPipeUDP      = "both peers on UDP"
	tunPipeDialer   = "dialer tunnelled, accepter on UDP"
	tunPipeBoth     = "both peers tunnelled"
	tunConnectUDP   = "NewDialer over UDP"
	tunConnectTun   = "NewDialer through the tunnel"
	tunCapUDPPlain  = "UDP in, UDP out (relay without tunnel)"
	tunCapUDPTunnel = "UDP in, UDP out (relay with RelayConfig.Tunnel set)"
	tunCapTunnel    = "tunnel in, UDP out (the same relay)"
)

// tunnelPort is the relay's tunnel TCP port in the lab; tunnelURL its URL.
const tunnelPort = 8443

func tunnelURL(port int) string {
	return fmt.Sprintf("wss://%s:%d/v1/tunnel", addrR, port)
}

func runTunnel(ctx context.Context, res *Results, opt options, outDir string) error {
	if err := tunnelPipes(res, opt); err != nil {
		res.missing("tunnel: pipes on shaped links", err)
	}
	closeAllLabs()
	if err := tunnelCapacity(res, opt); err != nil {
		res.missing("tunnel: relay CPU per forwarded datagram", err)
	}
	closeAllLabs()
	return nil
}

func tunnelPipes(res *Results, opt options) error {
	lab, err := newRelayLab()
	if err != nil {
		return err
	}
	defer lab.Close()
	// As in the bulk comparison: peers compute checksums in software.
	if err := lab.checksumOffloadOff(); err != nil {
		return err
	}
	if err := lab.shape(opt.shapeRate, opt.shapeRate); err != nil {
		return err
	}
	if _, err := lab.startDelay(opt.delay); err != nil {
		return err
	}
	relayAddr := fmt.Sprintf("%s:%d", addrR, relayPort)
	relay, err := lab.startRole("quicpipe-relay", "r", -1, "relay", "-listen", relayAddr, "-mailbox",
		"-tunnel", fmt.Sprintf("%s:%d", addrR, tunnelPort))
	if err != nil {
		return err
	}
	defer relay.stop()
	url := tunnelURL(tunnelPort)
	cond := fmt.Sprintf("links shaped to %s (tbf), %v one-way delay per path, direct path off", mbit(opt.shapeRate), opt.delay)
	setup := res.figure("tunnel_setup", "tunnel", "Pipe setup through the relay: UDP against the tunnel", cond, "ms", false)
	setup.Explanation = fmt.Sprintf("As the setup comparison measures it: from DialMailbox to the first application byte read "+
		"by the accepter, the accepter's mailbox open and the dialer registered (its tunnel open) before the clock starts. "+
		"One relay serves UDP and the tunnel (RelayConfig.Tunnel) for every case; tunnelled peers use Config.Tunnel "+
		"TunnelOnly, the others TunnelOff. The tunnel is TCP through the same delay line, so the handshake's round trips "+
		"are the same as over UDP (%v per relayed leg): a difference is the tunnel's processing, or TCP's delivery.",
		2*opt.delay)
	connect := res.figure("tunnel_connect", "tunnel", "Reaching the relay: NewDialer until it returns, registered", cond, "ms", false)
	connect.Explanation = "A new Dialer from a new socket each time (quicpipe.NewDialer): over UDP, a QUIC handshake with the relay " +
		"and the registration; through the tunnel (TunnelOnly), first TCP's handshake, TLS and the WebSocket upgrade, " +
		"each a round trip to the relay, then the same. TunnelAuto adds its 300 ms TunnelDelay before it opens the tunnel " +
		"where UDP gets no answer (decision 0025); that is not measured here."
	tput := res.figure("tunnel_bulk", "tunnel", "Bulk throughput of one pipe through the relay: UDP against the tunnel", cond, "Mbit/s", true)
	tput.Explanation = fmt.Sprintf("As the bulk comparison measures it: one stream of %d MiB from the dialer per repetition, "+
		"from stream open to the last byte read (slow start included). Through a tunnel, QUIC runs inside TCP: "+
		"both control congestion.", opt.bulkShaped>>20)
	steady := res.figure("tunnel_bulk_steady", "tunnel", "Bulk throughput through the relay, second half of each transfer: UDP against the tunnel",
		cond, "Mbit/s", true)
	steady.Explanation = "The same transfers, counting only the second half of the bytes."
	relayCPU := res.figure("tunnel_bulk_relay_cpu", "tunnel", "Relay process CPU per gigabyte forwarded: UDP against the tunnel",
		cond, "CPU-seconds per GB", false)
	relayCPU.Explanation = "User+system CPU of the relay process during the transfers above, per 10^9 bytes of stream data " +
		"(the relay is not pinned; the link, not its CPU, is the limit)."

	cases := []struct {
		name            string
		dialTun, accTun string
		baseline        bool
		dialVia, accVia string // the transports the peers must report
		connectCase     string // the connect series this case's dialer measures, if any
	}{
		{tunPipeUDP, "off", "off", true, "udp", "udp", tunConnectUDP},
		{tunPipeDialer, url, "off", false, "tunnel", "udp", tunConnectTun},
		{tunPipeBoth, url, url, false, "tunnel", "tunnel", ""},
	}
	common := []string{"-kind", "quicpipe", "-relay", relayAddr, "-relaykey", hex.EncodeToString(pub(benchKey("relay")))}
	for _, c := range cases {
		logf("tunnel (%s): %s", cond, c.name)
		err := func() error {
			acc, err := lab.startRole("accepter", "b", -1, "peer", append([]string{"-side", "accept",
				"-listen", fmt.Sprintf("%s:4500", addrB), "-tunnel", c.accTun}, common...)...)
			if err != nil {
				return err
			}
			defer acc.stop()
			dial, err := lab.startRole("dialer", "a", -1, "peer", append([]string{"-side", "dial",
				"-to", fmt.Sprintf("%s:4500", addrB), "-tunnel", c.dialTun}, common...)...)
			if err != nil {
				return err
			}
			defer dial.stop()
			var accVia struct{ Transport string }
			if err := acc.call(10*time.Second, &accVia, "transport"); err != nil {
				return err
			}
			r, _, _, err := measureDial(dial, acc, 1, 60*time.Second) // warm up
			if err != nil {
				return err
			}
			if r.Transport != c.dialVia || accVia.Transport != c.accVia {
				return fmt.Errorf("the dialer reaches the relay over %q and the accepter over %q, not %q and %q",
					r.Transport, accVia.Transport, c.dialVia, c.accVia)
			}
			var vals []string
			for range opt.setupReps {
				r, first, _, err := measureDial(dial, acc, 1, 60*time.Second)
				if err != nil {
					return err
				}
				ms := float64(first.T-r.T0) / 1e6
				setup.add(c.name, c.baseline, ms)
				vals = append(vals, fmt.Sprintf("%.1f", ms))
			}
			logf("  setup: %s ms", strings.Join(vals, " "))
			if c.connectCase != "" {
				vals = vals[:0]
				for range opt.setupReps {
					var cr struct {
						Ms        float64 `json:"ms"`
						Transport string  `json:"transport"`
					}
					if err := dial.call(90*time.Second, &cr, "connect"); err != nil {
						return err
					}
					if cr.Transport != c.dialVia {
						return fmt.Errorf("connect: the new dialer reached the relay over %q, not %q", cr.Transport, c.dialVia)
					}
					connect.add(c.connectCase, c.baseline, cr.Ms)
					vals = append(vals, fmt.Sprintf("%.1f", cr.Ms))
				}
				logf("  %s: %s ms", c.connectCase, strings.Join(vals, " "))
			}
			if _, _, _, err := measureDial(dial, acc, 1<<20, 120*time.Second); err != nil { // warm up
				return err
			}
			vals = vals[:0]
			for range opt.reps {
				rc0, err := procCPU(relay.pid())
				if err != nil {
					return err
				}
				r, _, eof, err := measureDial(dial, acc, opt.bulkShaped, 600*time.Second)
				if err != nil {
					return err
				}
				rc1, err := procCPU(relay.pid())
				if err != nil {
					return err
				}
				secs := float64(eof.T-r.TConn) / 1e9
				mbps := float64(eof.Bytes) * 8 / secs / 1e6
				tput.add(c.name, c.baseline, mbps)
				if k := len(eof.Marks) / 2; k > 0 && eof.T > eof.Marks[k-1] {
					steady.add(c.name, c.baseline, float64(eof.Bytes-int64(k)<<20)*8/(float64(eof.T-eof.Marks[k-1])/1e9)/1e6)
				}
				relayCPU.add(c.name, c.baseline, (rc1-rc0)/(float64(eof.Bytes)/1e9))
				vals = append(vals, fmt.Sprintf("%.0f", mbps))
			}
			logf("  bulk: %s Mbit/s", strings.Join(vals, " "))
			return nil
		}()
		if err != nil {
			res.missing(fmt.Sprintf("tunnel (%s): %s", cond, c.name), err)
		}
	}
	return nil
}

// tunRun is one case of the relay CPU measurement: a relay and the
// generator that loads it.
type tunRun struct {
	name     string
	baseline bool
	srv      *capServer
	gen      *proc
}

func tunnelCapacity(res *Results, opt options) error {
	lab, err := newCapacityLab()
	if err != nil {
		return err
	}
	defer lab.Close()
	tmp, err := tempDir(lab, "tunnel-")
	if err != nil {
		return err
	}
	cond := "veth, 1200-byte datagrams, relay on one core (capacity harness)"
	pps := res.figure("tunnel_capacity_pps", "tunnel", "Datagrams forwarded per second: from a tunnel against from UDP", cond, "datagrams/s", true)
	perCPU := res.figure("tunnel_capacity_per_cpu", "tunnel", "Datagrams forwarded per relay CPU-second: from a tunnel against from UDP",
		cond, "datagrams per relay CPU-second", true)
	nsPer := res.figure("tunnel_capacity_cpu_per_datagram", "tunnel", "Relay CPU per forwarded datagram: from a tunnel against from UDP",
		cond, "ns per datagram", false)
	core := res.figure("tunnel_capacity_relay_core", "tunnel", "Busy share of the relay's core (CPU 1)", cond, "% of CPU 1", false)
	core.NoRatios = true
	pps.Explanation = "The capacity harness of comparison 1, flat out. Two relays run at once, pinned to the relay's core: " +
		"one without a tunnel, one with RelayConfig.Tunnel set (its TLS/WebSocket listener open). The UDP generator " +
		"(sendmmsg with GSO, segmented before it leaves A) loads each; a tunnel generator on the generator's core " +
		"writes the same 1200-byte datagrams, for the same 64 registered CIDs of the sink, into the second relay's " +
		"tunnel, one WebSocket message each with github.com/coder/websocket, as a peer does (TLS 1.3, one TLS record " +
		"and one write per datagram), after registering its tunnel's virtual address from inside it over HTTP/3. " +
		"The relay reads each tunnel on a goroutine of its own and forwards each datagram with one sendto; from UDP " +
		"it reads batches (recvmmsg) and sends with sendmmsg or GSO. The windows go to the three in turn."
	perCPU.Explanation = "Forwarded datagrams (at the sink) over the relay process's user+system CPU time, which includes the " +
		"kernel's work in its system calls: the UDP send and its way through G to the sink in every case; for the " +
		"tunnel also the reads from the TCP socket and the acknowledgments they send, TLS decryption and the WebSocket " +
		"framing. (On veth the TCP and UDP receive paths run on the sender's core, the generator's, in both cases.) " +
		"Where the relay's core is not saturated (see its busy share) the generator is the limit and the relay reads " +
		"smaller batches, which costs it more per datagram."
	nsPer.Explanation = "The reciprocal of the previous figure: relay CPU-seconds per forwarded datagram, in nanoseconds."

	plain := capCase{name: tunCapUDPPlain, kind: "quicpipe", baseline: true, port: relayPort}
	withTun := capCase{name: tunCapUDPTunnel, kind: "quicpipe", baseline: true, port: relayPort + 1,
		tunnel: fmt.Sprintf("%s:%d", addrR, tunnelPort)}
	if err := tunnelWindows(lab, opt, tmp, plain, withTun, pps, perCPU, nsPer, core); err != nil {
		return err
	}
	// Stable where CPU times are not: the relays' userspace instructions.
	if !noInstructions && opt.mode != "smoke" {
		if err := tunnelInstructions(lab, res, opt, tmp, plain, withTun); err != nil {
			res.missing("tunnel: instructions per datagram", err)
		}
	}
	if err := tunnelMemory(lab, res, opt); err != nil {
		res.missing("tunnel: relay memory per idle tunnel", err)
	}
	return nil
}

// startTunnelGen starts the tunnel generator, registered with the relay of
// case c, which serves its tunnel on tunnelPort.
func startTunnelGen(lab *Lab, c capCase) (*proc, error) {
	port := c.port
	if port == 0 {
		port = relayPort
	}
	return lab.startRole("tunnel-generator", "a", capGenCPU, "tungen", "-url", tunnelURL(tunnelPort),
		"-relay", fmt.Sprintf("%s:%d", addrR, port), "-relaykey", hex.EncodeToString(pub(benchKey("relay"))),
		"-cidkey", cidKeyHex, "-ncids", "64", "-regkey", genCIDKeyHexFlow(9))
}

// tunnelWindows runs the relays of plain and withTun at once, a UDP
// generator for each and the tunnel generator into withTun's tunnel, and
// measures their windows in turn.
func tunnelWindows(lab *Lab, opt options, tmp string, plain, withTun capCase, pps, perCPU, nsPer, core *Figure) error {
	var runs []tunRun
	for i, c := range []capCase{plain, withTun} {
		logf("tunnel capacity: starting %s", c.name)
		srv, gen, err := startCapRelayGen(lab, c, tmp, i, 7300+i)
		if err != nil {
			return err
		}
		defer srv.stop()
		defer gen.stop()
		runs = append(runs, tunRun{name: c.name, baseline: c.baseline, srv: srv, gen: gen})
	}
	tgen, err := startTunnelGen(lab, withTun)
	if err != nil {
		return fmt.Errorf("%s: %w", tunCapTunnel, err)
	}
	defer tgen.stop()
	runs = append(runs, tunRun{name: tunCapTunnel, srv: runs[1].srv, gen: tgen})

	if err := lab.sinkOn(); err != nil {
		return err
	}
	defer lab.sinkOff()
	for _, r := range runs {
		if _, err := capWindow(lab, r.gen, r.srv, 0.5, 0); err != nil { // warm up
			return fmt.Errorf("%s: %w", r.name, err)
		}
	}
	windows := 2 * opt.reps
	if opt.mode == "smoke" {
		windows = 1
	}
	var tunPairs, setPairs []float64
	for rep := range windows {
		per := make([]float64, len(runs))
		for k := range runs {
			i := (k + rep) % len(runs) // alternate which goes first
			r := runs[i]
			m, err := steadyWindow(lab, r.gen, r.srv, opt.capWindow, opt.mode != "smoke", nil)
			if err != nil {
				return fmt.Errorf("%s: %w", r.name, err)
			}
			if m.fwd < 1000 {
				return fmt.Errorf("%s: only %.0f datagrams reached the sink in %.1fs (offered %.0f/s)", r.name, m.fwd, m.secs, m.offered)
			}
			pps.add(r.name, r.baseline, m.fwd/m.secs)
			perCPU.add(r.name, r.baseline, m.fwd/m.relayCPU)
			nsPer.add(r.name, r.baseline, m.relayCPU/m.fwd*1e9)
			core.add(r.name, r.baseline, m.core[capRelayCPU]/m.secs*100)
			per[i] = m.fwd / m.relayCPU
			logf("  %-52s %9.0f/s  %6.0f/relay-CPU-s  relay CPU %5.1f%%  offered %9.0f/s  CPU0 %3.0f%% CPU1 %3.0f%% foreign %3.0f%%",
				r.name, m.fwd/m.secs, m.fwd/m.relayCPU, m.relayCPU/m.secs*100, m.offered,
				m.core[capGenCPU]/m.secs*100, m.core[capRelayCPU]/m.secs*100, m.foreign/m.secs*100)
		}
		tunPairs = append(tunPairs, per[2]/per[1])
		setPairs = append(setPairs, per[1]/per[0])
	}
	// Consecutive windows met nearly the same machine: the median of
	// their ratios is less disturbed by others' work than the ratio of
	// medians.
	perCPU.Explanation += fmt.Sprintf(" Ratios of consecutive windows, datagrams per relay CPU-second: tunnel in over UDP in "+
		"(the same relay) median %.2f× [%.2f – %.2f]; the relay with the tunnel set over the relay without, UDP in, "+
		"median %.2f× [%.2f – %.2f]; over %d rounds.",
		percentile(tunPairs, 50), percentile(tunPairs, 0), percentile(tunPairs, 100),
		percentile(setPairs, 50), percentile(setPairs, 0), percentile(setPairs, 100), len(tunPairs))
	return nil
}

// tunnelInstructions counts the userspace instructions per forwarded
// datagram (callgrind, instructions.go) of the relays of plain and withTun
// from UDP, and of withTun's from its tunnel.
func tunnelInstructions(lab *Lab, res *Results, opt options, tmp string, plain, withTun capCase) error {
	for _, tool := range []string{"valgrind", "callgrind_control"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (apt-get install valgrind): %w", tool, err)
		}
	}
	fig := res.figure("tunnel_instructions", "tunnel", "Userspace instructions per forwarded datagram: from a tunnel against from UDP (callgrind)",
		fmt.Sprintf("veth, 1200-byte datagrams offered at %.0f/s", opt.cgRate), "instructions per datagram", false)
	fig.Explanation = "As comparison 1's instruction counts: valgrind's callgrind in the relay process only (no kernel), idle " +
		"time subtracted, one relay at a time. Stable on a shared machine where CPU times are not. For the tunnel: " +
		"reading the WebSocket messages, TLS decryption, the forwarding decision and the sendto, in userspace."
	for i, c := range []capCase{plain, withTun} {
		logf("tunnel instructions: %s", c.name)
		if err := instructionsCase(lab, fig, opt, tmp, c, 7310+i); err != nil {
			res.missing("tunnel: instructions per datagram, "+c.name, err)
		}
	}
	logf("tunnel instructions: %s", tunCapTunnel)
	err := func() error {
		dir, err := os.MkdirTemp(tmp, "callgrind-")
		if err != nil {
			return err
		}
		srv, err := startCapServer(lab, withTun, dir, true)
		if err != nil {
			return err
		}
		defer srv.stop()
		gen, err := startTunnelGen(lab, withTun)
		if err != nil {
			return err
		}
		defer gen.stop()
		if err := lab.sinkOn(); err != nil {
			return err
		}
		defer lab.sinkOff()
		return countInstructions(lab, fig, opt, dir, tunCapTunnel, false, srv.relay.pid(), gen)
	}()
	if err != nil {
		res.missing("tunnel: instructions per datagram, "+tunCapTunnel, err)
	}
	return nil
}

// tunnelMemory measures a fresh relay's memory before and after idle
// tunnels are opened to it, in two steps.
func tunnelMemory(lab *Lab, res *Results, opt options) error {
	const port = relayPort + 2
	n := 5 * opt.memPipes
	relay, err := lab.startRole("quicpipe-relay-mem", "r", -1, "relay", "-listen", fmt.Sprintf("%s:%d", addrR, port),
		"-tunnel", fmt.Sprintf("%s:%d", addrR, tunnelPort+1))
	if err != nil {
		return err
	}
	defer relay.stop()
	cl, err := lab.startRole("tunnels", "a", -1, "tunnels", "-url", tunnelURL(tunnelPort+1),
		"-relaykey", hex.EncodeToString(pub(benchKey("relay"))))
	if err != nil {
		return err
	}
	defer cl.stop()
	fig := res.figure("tunnel_memory", "tunnel", "Relay memory per idle tunnel",
		fmt.Sprintf("a fresh relay, %d tunnels opened per step (TLS 1.3, WebSocket upgrade, no datagrams)", n), "bytes per tunnel", false)
	fig.NoRatios = true
	fig.Explanation = "Growth over the tunnels opened, per tunnel, measured twice (0 → N, N → 2N): the Go heap after a " +
		"collection (HeapAlloc), goroutine stacks (StackInuse: the relay's reader and writer per tunnel), and the " +
		"process's resident memory. The kernel's TCP socket buffers are not in these figures."
	prev, err := relayHeap(relay)
	if err != nil {
		return err
	}
	for step := 1; step <= 2; step++ {
		if err := cl.call(180*time.Second, nil, "open", n); err != nil {
			return err
		}
		// The relay opens its side once the upgrade's answer is out: wait
		// until it counts them all.
		var st relayStats
		deadline := time.Now().Add(30 * time.Second)
		for {
			if err := relay.call(10*time.Second, &st, "stats"); err != nil {
				return err
			}
			if st.Tunnels >= uint64(step*n) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the relay holds %d tunnels, not %d", st.Tunnels, step*n)
			}
			time.Sleep(50 * time.Millisecond)
		}
		cur, err := relayHeap(relay)
		if err != nil {
			return err
		}
		heap := (float64(cur.HeapAlloc) - float64(prev.HeapAlloc)) / float64(n)
		stack := (float64(cur.StackInuse) - float64(prev.StackInuse)) / float64(n)
		rss := float64(cur.RSS-prev.RSS) / float64(n)
		fig.add("Go heap (HeapAlloc after GC)", false, heap)
		fig.add("goroutine stacks (StackInuse)", false, stack)
		fig.add("RSS", false, rss)
		logf("  %d tunnels: heap %.0f B, stacks %.0f B, RSS %.0f B per tunnel; %.1f goroutines per tunnel",
			step*n, heap, stack, rss, float64(cur.Goroutines-prev.Goroutines)/float64(n))
		prev = cur
	}
	return nil
}

package main

// Comparison 2: pipe setup time, from the dialer's first call to the first
// application byte read by the accepter, for
//
//   - Quicpipe through the relay: the accepter holds its mailbox, the dialer
//     is registered (quicpipe.NewDialer) before the clock starts; DialMailbox
//     posts the first flight to the mailbox and the handshake completes
//     through the relay;
//   - a direct quic-go connection (same TLS: Ed25519 certificates pinned
//     both ways), from a socket opened before the clock starts;
//   - a pion WebRTC data channel: offer and answer through an HTTP
//     signalling server in the relay's namespace (the accepter holds a long
//     poll, the dialer's HTTP connection is open before the clock starts),
//     host candidates only, certificates made in advance.
//
// On bare loopback (one namespace), where CPU dominates, and on the
// four-namespace lab with 25 ms of one-way delay on every path (delay.go),
// where round trips dominate: peer to relay, relay to peer and peer to peer
// each take 25 ms one way, so a relayed packet takes 50 ms.

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

type setupCase struct {
	name     string
	kind     string
	baseline bool
}

var setupCases = []setupCase{
	{name: "Quicpipe via relay mailbox", kind: "quicpipe"},
	{name: "direct quic-go", kind: "quic", baseline: true},
	{name: "pion WebRTC data channel", kind: "webrtc", baseline: true},
}

// setupNet says where everything runs in one condition.
type setupNet struct {
	lab                    *Lab
	relayNS, dialNS, accNS string
	relayIP, dialIP, accIP string
	dialIface, accIface    string
	loopback               bool
}

func runSetup(ctx context.Context, res *Results, opt options, outDir string) error {
	// Loopback.
	loop, err := newLoopLab()
	if err != nil {
		return err
	}
	n := setupNet{lab: loop, relayNS: "l", dialNS: "l", accNS: "l", relayIP: "127.0.0.1", dialIP: "127.0.0.1",
		accIP: "127.0.0.1", dialIface: "lo", accIface: "lo", loopback: true}
	fig := res.figure("setup_loopback", "setup", "Pipe setup: dial to first application byte at the accepter",
		"bare loopback", "ms", false)
	fig.Explanation = "One namespace, no delay: CPU dominates. Registrations, the mailbox, the signalling connection and certificates exist before the clock starts."
	setupCondition(res, fig, n, opt)
	loop.Close()

	// 25 ms per path.
	lab, err := newRelayLab()
	if err != nil {
		return err
	}
	defer lab.Close()
	if _, err := lab.startDelay(opt.delay); err != nil {
		return err
	}
	n = setupNet{lab: lab, relayNS: "r", dialNS: "a", accNS: "b", relayIP: addrR, dialIP: addrA, accIP: addrB,
		dialIface: "a0", accIface: "b0"}
	fig = res.figure("setup_delay", "setup", "Pipe setup: dial to first application byte at the accepter",
		fmt.Sprintf("%v one-way delay per path (userspace delay line)", opt.delay), "ms", false)
	fig.Explanation = fmt.Sprintf("Every peer-relay and peer-peer path has %v of one-way delay, so round trips dominate; a relayed packet crosses two paths. Floors: a direct QUIC handshake plus the first byte is 1.5 round trips (%v); through the relay, every one of those legs crosses two paths (2x).",
		opt.delay, 3*opt.delay)
	setupCondition(res, fig, n, opt)
	return nil
}

func setupCondition(res *Results, fig *Figure, n setupNet, opt options) {
	for _, c := range setupCases {
		logf("setup (%s): %s", fig.Condition, c.name)
		if err := setupCaseRun(fig, n, c, opt); err != nil {
			res.missing(fmt.Sprintf("setup (%s): %s", fig.Condition, c.name), err)
		}
	}
}

// startPeers starts what case kind needs and returns the dialer and the
// accepter.
func startPeers(n setupNet, kind string, xdp bool, direct bool) (dial, acc *proc, stop func(), err error) {
	var procs []*proc
	stop = func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
	}
	start := func(name, ns, role string, args ...string) (*proc, error) {
		p, err := n.lab.startRole(name, ns, -1, role, args...)
		if err == nil {
			procs = append(procs, p)
		}
		return p, err
	}
	fail := func(err error) (*proc, *proc, func(), error) {
		stop()
		return nil, nil, nil, err
	}
	var common []string
	switch kind {
	case "quicpipe":
		relayAddr := fmt.Sprintf("%s:%d", n.relayIP, relayPort)
		args := []string{"-listen", relayAddr, "-mailbox"}
		if xdp {
			if _, err := start("xdp-pass", "g", "xdpprog", "-kind", "pass", "-iface", "g2"); err != nil {
				return fail(err)
			}
			args = append(args, "-xdp", "r0", "-xdpmode", "native")
		}
		if _, err := start("quicpipe-relay", n.relayNS, "relay", args...); err != nil {
			return fail(err)
		}
		common = []string{"-kind", "quicpipe", "-relay", relayAddr, "-relaykey", hex.EncodeToString(pub(benchKey("relay")))}
		if direct {
			common = append(common, "-direct")
		}
	case "quic":
		common = []string{"-kind", "quic"}
	case "quic-qp":
		common = []string{"-kind", "quic", "-qpparams"}
	case "webrtc":
		if _, err := start("signalling", n.relayNS, "signal", "-listen", fmt.Sprintf("%s:8080", n.relayIP)); err != nil {
			return fail(err)
		}
		common = []string{"-kind", "webrtc", "-signal", fmt.Sprintf("http://%s:8080", n.relayIP)}
		if n.loopback {
			common = append(common, "-loopback")
		}
	default:
		return fail(fmt.Errorf("unknown kind %q", kind))
	}
	accArgs := append([]string{"-side", "accept", "-listen", fmt.Sprintf("%s:4500", n.accIP)}, common...)
	dialArgs := append([]string{"-side", "dial", "-to", fmt.Sprintf("%s:4500", n.accIP)}, common...)
	if kind == "webrtc" {
		accArgs = append(accArgs, "-iface", n.accIface)
		dialArgs = append(dialArgs, "-iface", n.dialIface)
	}
	if acc, err = start("accepter", n.accNS, "peer", accArgs...); err != nil {
		return fail(err)
	}
	if dial, err = start("dialer", n.dialNS, "peer", dialArgs...); err != nil {
		return fail(err)
	}
	return dial, acc, stop, nil
}

// measureDial dials once with nbytes and returns the dialer's result and
// the accepter's first and last byte events.
func measureDial(dial, acc *proc, nbytes int64, timeout time.Duration) (dialResult, streamEvent, streamEvent, error) {
	var r dialResult
	var first, eof streamEvent
	acc.drainEvents()
	if err := dial.call(timeout, &r, "dial", nbytes); err != nil {
		return r, first, eof, err
	}
	for first.Type != "first" || eof.Type != "eof" {
		var ev streamEvent
		if err := acc.event(10*time.Second, &ev); err != nil {
			return r, first, eof, err
		}
		switch {
		case ev.Type == "first":
			first = ev
		case ev.Type == "eof":
			eof = ev
		case strings.HasPrefix(ev.Type, "error"):
			return r, first, eof, fmt.Errorf("accepter: %s", ev.Type)
		}
	}
	return r, first, eof, nil
}

func setupCaseRun(fig *Figure, n setupNet, c setupCase, opt options) error {
	dial, acc, stop, err := startPeers(n, c.kind, false, false)
	if err != nil {
		return err
	}
	defer stop()
	if _, _, _, err := measureDial(dial, acc, 1, 60*time.Second); err != nil { // warm up
		return err
	}
	var vals []string
	for i := 0; i < opt.setupReps; i++ {
		r, first, _, err := measureDial(dial, acc, 1, 60*time.Second)
		if err != nil {
			return err
		}
		ms := float64(first.T-r.T0) / 1e6
		fig.add(c.name, c.baseline, ms)
		vals = append(vals, fmt.Sprintf("%.1f", ms))
	}
	logf("  %s: %s ms", c.name, strings.Join(vals, " "))
	return nil
}

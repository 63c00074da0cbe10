package main

// Comparison 3: bulk throughput of one pipe: one stream from the dialer in A
// to the accepter in B, through the Quicpipe relay in R (userspace, and with
// the XDP fast path), against a direct quic-go connection from A to B.
//
//   - bare veth links: nothing is pinned, so the relay competes with both
//     peers for the machine's two cores; the relay's CPU per gigabyte
//     forwarded is reported beside the throughput;
//   - links shaped to 200 Mbit/s (tbf on both ends of every link) with 25 ms
//     of one-way delay per path (delay.go): the network is the bottleneck.
//     Two controls run there only: direct quic-go connections whose path
//     is delayed twice as long, so that they have the relayed path's
//     round-trip time, the second also with Quicpipe's packet parameters
//     (1280-byte datagrams, 12-byte connection IDs). They separate what the
//     relay costs from what a longer path and smaller datagrams cost;
//   - the same, with the relay's own link (g2, r0) shaped to 1 Gbit/s: on
//     the first shaped condition the relay's link carries one direction's
//     data and the other direction's acknowledgments at the peers' rate,
//     which direct paths never do; here only the peers' links limit.
//
// Throughput is bytes over the time from the dialer's stream opening
// (after the handshake) to the accepter's reading of the last byte. Peers
// send with software checksums in every case (XDP needs complete ones, see
// xdp/README.md), so that all cases pay the same. With XDP, forwarded frames
// are sent back out of the relay's interface by the driver (XDP_TX), which
// bypasses that interface's tbf: the shaping of the router's links still
// applies.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

type bulkCase struct {
	name     string
	kind     string // setup kind: quicpipe, quic or quic-qp
	xdp      bool
	direct   bool // Quicpipe may move the pipe onto a direct path
	baseline bool
	// delayFactor multiplies the delay per crossing (shaped links only;
	// 0 means 1); shapedOnly cases run on shaped links only.
	delayFactor int
	shapedOnly  bool
}

// bulkCond is one network condition of the bulk comparison.
type bulkCond struct {
	id        string
	shaped    bool
	relayRate string   // rate of the relay's link if not the peers' rate
	cases     []string // the cases that run (nil: all)
}

var bulkConds = []bulkCond{
	{id: "bulk_bare"},
	{id: "bulk_shaped", shaped: true},
	{id: "bulk_shaped_fastrelay", shaped: true, relayRate: "1000mbit",
		cases: []string{"Quicpipe via relay (userspace)", bulkSameRTTPkt}},
}

// Names of the bulk cases that the targets refer to.
const (
	bulkDirect     = "direct quic-go"
	bulkSameRTT    = "control: quic-go at the relayed path's RTT"
	bulkSameRTTPkt = "control: quic-go at the relayed path's RTT, Quicpipe's packets"
)

var bulkCases = []bulkCase{
	{name: "Quicpipe via relay (userspace)", kind: "quicpipe"},
	{name: "Quicpipe via relay (XDP)", kind: "quicpipe", xdp: true},
	{name: "Quicpipe, direct path", kind: "quicpipe", direct: true},
	{name: bulkDirect, kind: "quic", baseline: true},
	{name: bulkSameRTT, kind: "quic", delayFactor: 2, shapedOnly: true},
	{name: bulkSameRTTPkt, kind: "quic-qp", delayFactor: 2, shapedOnly: true, baseline: true},
}

func runBulk(ctx context.Context, res *Results, opt options, outDir string) error {
	for _, bc := range bulkConds {
		if err := bulkCondition(res, opt, bc); err != nil {
			res.missing(fmt.Sprintf("bulk (%s)", bc.id), err)
		}
		closeAllLabs()
	}
	return nil
}

func bulkCondition(res *Results, opt options, bc bulkCond) error {
	shaped := bc.shaped
	lab, err := newRelayLab()
	if err != nil {
		return err
	}
	defer lab.Close()
	if err := lab.checksumOffloadOff(); err != nil {
		return err
	}
	cond, size := "bare veth, 2 cores shared by peers and relay", opt.bulkBare
	id := bc.id
	var delay *proc
	if shaped {
		relayRate := bc.relayRate
		if relayRate == "" {
			relayRate = opt.shapeRate
		}
		if err := lab.shape(opt.shapeRate, relayRate); err != nil {
			return err
		}
		if delay, err = lab.startDelay(opt.delay); err != nil {
			return err
		}
		cond, size = fmt.Sprintf("links shaped to %s (tbf), %v one-way delay per path", mbit(opt.shapeRate), opt.delay), opt.bulkShaped
		if bc.relayRate != "" {
			cond = fmt.Sprintf("peers' links shaped to %s, the relay's to %s (tbf), %v one-way delay per path",
				mbit(opt.shapeRate), mbit(bc.relayRate), opt.delay)
		}
	}
	tput := res.figure(id, "bulk", "Bulk throughput of one pipe", cond, "Mbit/s", true)
	tput.Explanation = fmt.Sprintf("One stream of %d MiB per repetition, from stream open to the last byte read (slow start included).", size>>20)
	steady := res.figure(id+"_steady", "bulk", "Bulk throughput of one pipe, second half of each transfer", cond, "Mbit/s", true)
	steady.Explanation = "The same transfers, counting only the second half of the bytes: the rate once the congestion window is open."
	var relayCPU, labCPUFig *Figure
	if !shaped {
		relayCPU = res.figure("bulk_relay_cpu", "bulk", "Relay process CPU per gigabyte forwarded", cond, "CPU-seconds per GB", false)
		relayCPU.Explanation = "User+system CPU of the relay process during the transfer, per 10^9 bytes of stream data. With XDP the kernel forwards in softirq context outside the relay process: see the machine figure."
		labCPUFig = res.figure("bulk_machine_cpu", "bulk", "Machine CPU per gigabyte transferred (peers, router and relay)", cond, "CPU-seconds per GB", false)
		labCPUFig.Explanation = "CPU time of every process in the lab's namespaces and of kernel threads, per 10^9 bytes of stream data."
	}
	n := setupNet{lab: lab, relayNS: "r", dialNS: "a", accNS: "b", relayIP: addrR, dialIP: addrA, accIP: addrB,
		dialIface: "a0", accIface: "b0"}
	ino := lab.nsInodes()
	for _, c := range bulkCases {
		if c.shapedOnly && !shaped || bc.cases != nil && !slices.Contains(bc.cases, c.name) {
			continue
		}
		logf("bulk (%s): %s", cond, c.name)
		err := func() error {
			if delay != nil {
				d := opt.delay * time.Duration(max(c.delayFactor, 1))
				if err := delay.call(10*time.Second, nil, "set", d); err != nil {
					return err
				}
			}
			dial, acc, stop, err := startPeers(n, c.kind, c.xdp, c.direct)
			if err != nil {
				return err
			}
			defer stop()
			var relay *proc
			for _, p := range lab.procs {
				if p.name == "quicpipe-relay" && !p.exited() {
					relay = p
				}
			}
			if _, _, _, err := measureDial(dial, acc, 1<<20, 120*time.Second); err != nil { // warm up
				return err
			}
			var vals []string
			for i := 0; i < opt.reps; i++ {
				var rc0, rc1 float64
				if relay != nil {
					rc0, _ = procCPU(relay.pid())
				}
				l0 := readLabCPU(ino)
				r, _, eof, err := measureDial(dial, acc, size, 600*time.Second)
				if err != nil {
					return err
				}
				l1 := readLabCPU(ino)
				if relay != nil {
					rc1, _ = procCPU(relay.pid())
				}
				if c.direct && r.Path != "direct" {
					return fmt.Errorf("the pipe did not move onto a direct path within %.0f ms (path %q)", r.WaitMs, r.Path)
				}
				if c.direct && i == 0 {
					res.note("bulk (%s), %s: the pipe moved onto the direct path %.0f ms after the dial returned; the stream opened then.", cond, c.name, r.WaitMs)
				}
				secs := float64(eof.T-r.TConn) / 1e9
				mbps := float64(eof.Bytes) * 8 / secs / 1e6
				tput.add(c.name, c.baseline, mbps)
				if k := len(eof.Marks) / 2; k > 0 && eof.T > eof.Marks[k-1] {
					steady.add(c.name, c.baseline, float64(eof.Bytes-int64(k)<<20)*8/(float64(eof.T-eof.Marks[k-1])/1e9)/1e6)
				}
				gb := float64(eof.Bytes) / 1e9
				if relayCPU != nil {
					if c.kind == "quicpipe" && !c.direct {
						relayCPU.add(c.name, c.baseline, (rc1-rc0)/gb)
					}
					labCPUFig.add(c.name, c.baseline, l1.sub(l0)/gb)
				}
				vals = append(vals, fmt.Sprintf("%.0f", mbps))
			}
			logf("  %s: %s Mbit/s", c.name, strings.Join(vals, " "))
			if relay != nil {
				var st relayStats
				if err := relay.call(10*time.Second, &st, "stats"); err == nil {
					x := st.XDP["forwarded_ipv4"] + st.XDP["forwarded_ipv6"]
					logf("  relay: %d datagrams forwarded in userspace, %d by XDP", st.Forwarded, x)
					if c.xdp {
						res.note("bulk (%s), %s: the relay forwarded %d datagrams in userspace and %d in XDP.", cond, c.name, st.Forwarded, x)
					}
				}
			}
			return nil
		}()
		if err != nil {
			res.missing(fmt.Sprintf("bulk (%s): %s", cond, c.name), err)
		}
	}
	return nil
}

// mbit turns a tc rate such as "200mbit" into "200 Mbit/s".
func mbit(rate string) string {
	return strings.Replace(rate, "mbit", " Mbit/s", 1)
}

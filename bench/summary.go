package main

// The targets of issue 8, evaluated from the figures, and the markdown
// summary.

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

func (r *Results) median(fig, name string) float64 {
	if s := r.find(fig).get(name); s != nil {
		return s.Median
	}
	return math.NaN()
}

// evaluateTargets compares the medians with issue 8's targets; delay is the
// shaped links' one-way delay per path.
func evaluateTargets(res *Results, delay time.Duration) {
	const (
		qpUser = "Quicpipe relay (userspace)"
		qpXDP  = "Quicpipe relay (XDP)"
		refl   = "bare XDP_TX reflector"
		gsoRef = "reference: recvmmsg+GSO loop"
		mmRef  = "reference: recvmmsg+sendmmsg loop"
	)
	add := func(name, goal string, ratio float64, met bool, detail, why string) {
		if math.IsNaN(ratio) || math.IsInf(ratio, 0) {
			res.target(&Target{Name: name, Goal: goal, Detail: "not measured (see Missing)"})
			return
		}
		t := &Target{Name: name, Goal: goal, Ratio: ratio, Met: met, Detail: detail, Measured: true}
		if !met {
			t.Why = why
		}
		res.target(t)
	}

	// Capacity, userspace.
	qp, ct, pt := res.median("capacity_per_cpu", qpUser), res.median("capacity_per_cpu", "coturn"), res.median("capacity_per_cpu", "pion/turn")
	gso, mm := res.median("capacity_per_cpu", gsoRef), res.median("capacity_per_cpu", mmRef)
	kernelShare := ""
	for _, p := range res.Profiles {
		if p.Case == qpUser {
			kernelShare = firstPercent(p.Top, "[kernel")
		}
	}
	why := func(base string, basev, goal float64) string {
		need := goal * basev
		return fmt.Sprintf("CPU per datagram is the kernel's on this machine: perf finds %s of the relay core's samples in the kernel, "+
			"and the relay's userspace instructions per datagram are %s of coturn's. The Quicpipe relay forwards %s datagrams per "+
			"CPU-second, %.0f%% of what a recvmmsg+GSO loop with no lookup at all forwards (%s, the ceiling of a userspace "+
			"forwarder here; a recvmmsg+sendmmsg loop forwards %s). %.0f× %s would need %s, %.0f%% of that ceiling: the "+
			"remaining gap is the relay's own path (Go runtime and quic-go's read loop around the lookup; %s instructions "+
			"per datagram against the loop's %s) and the kernel work it cannot batch.",
			orNA(kernelShare), ratioText(res.median("capacity_instructions", qpUser)/res.median("capacity_instructions", "coturn")),
			formatValue(qp, ""), 100*qp/gso, formatValue(gso, ""), formatValue(mm, ""),
			goal, base, formatValue(need, ""), 100*need/gso,
			formatValue(res.median("capacity_instructions", qpUser), ""), formatValue(res.median("capacity_instructions", gsoRef), ""))
	}
	add("userspace relay vs coturn", "≥ 1.5× coturn's datagrams per relay CPU-second", qp/ct, qp/ct >= 1.5,
		fmt.Sprintf("%s vs %s datagrams per relay CPU-second", formatValue(qp, ""), formatValue(ct, "")), why("coturn", ct, 1.5))
	add("userspace relay vs pion/turn", "≥ 2× pion/turn's datagrams per relay CPU-second", qp/pt, qp/pt >= 2,
		fmt.Sprintf("%s vs %s datagrams per relay CPU-second", formatValue(qp, ""), formatValue(pt, "")), why("pion/turn", pt, 2))
	al := res.median("capacity_allocs", qpUser)
	add("allocations per forwarded datagram", "0 (measured: heap allocations of the whole relay process per forwarded datagram, the harness's own stats requests included)",
		al, al < 0.001, fmt.Sprintf("%.5f allocations per datagram", al),
		"the relay process allocates on its forwarding path")

	// Capacity, XDP.
	x, rf, us := res.median("capacity_machine_cpu", qpXDP), res.median("capacity_machine_cpu", refl), res.median("capacity_machine_cpu", qpUser)
	add("XDP vs bare reflector", "machine CPU per forwarded datagram ≤ 1.1× the bare XDP_TX reflector's", x/rf, x/rf <= 1.1,
		fmt.Sprintf("%.0f vs %.0f ns per datagram", x, rf),
		"the program costs more per packet than a bare reflector beyond the noise of this measurement")
	above := (x - rf) / (us - rf)
	add("XDP cost above the reflector", "≤ 0.2× the userspace relay's cost above the reflector", above, above <= 0.2,
		fmt.Sprintf("(%.0f − %.0f) / (%.0f − %.0f) ns per datagram", x, rf, us, rf),
		"see the XDP figures")

	// Bulk.
	ms := float64(delay) / float64(time.Millisecond)
	for _, c := range []string{"Quicpipe via relay (userspace)", "Quicpipe via relay (XDP)"} {
		b, d := res.median("bulk_shaped", c), res.median("bulk_shaped", bulkDirect)
		sb, sd := res.median("bulk_shaped_steady", c), res.median("bulk_shaped_steady", bulkDirect)
		rtt, pkt := res.median("bulk_shaped", bulkSameRTT), res.median("bulk_shaped", bulkSameRTTPkt)
		spkt := res.median("bulk_shaped_steady", bulkSameRTTPkt)
		fb, fpkt := res.median("bulk_shaped_fastrelay", c), res.median("bulk_shaped_fastrelay", bulkSameRTTPkt)
		fsb, fspkt := res.median("bulk_shaped_fastrelay_steady", c), res.median("bulk_shaped_fastrelay_steady", bulkSameRTTPkt)
		fast := ""
		if !math.IsNaN(fb / fpkt) {
			fast = fmt.Sprintf(", and %.2f× (%.2f× over the second half) when the relay's link is faster than the peers', "+
				"as a relay's link is on the internet", fb/fpkt, fsb/fspkt)
		}
		add("shaped bulk: "+c, "≥ 0.95× a direct quic-go connection on shaped links", b/d, b/d >= 0.95,
			fmt.Sprintf("%.0f vs %.0f Mbit/s over the whole transfer; %.0f vs %.0f Mbit/s (%.2f×) over its second half",
				b, d, sb, sd, sb/sd),
			fmt.Sprintf("three costs that are not the relay's forwarding. The relayed path is twice as long: every packet "+
				"crosses two delayed paths, a round trip of %.0f ms against %.0f ms, so slow start needs twice as long to "+
				"open the window. Quicpipe keeps 1280-byte datagrams with 12-byte connection IDs (docs/PROTOCOL.md: no path MTU "+
				"discovery on relayed paths) where quic-go grows to the link's MTU. And the relay's link, shaped like the "+
				"peers', carries one direction's data and the other direction's acknowledgments. Controls measure these "+
				"without a relay: direct quic-go with the relayed path's round-trip time reaches %.2f× direct quic-go, "+
				"with Quicpipe's packets as well %.2f×; Quicpipe through the relay reaches %.2f× that last control "+
				"(%.2f× over the second half of the bytes)%s. With the direct path allowed, Quicpipe reaches %.2f× "+
				"direct quic-go over the whole transfer.",
				4*ms, 2*ms, rtt/d, pkt/d, b/pkt, sb/spkt, fast,
				res.median("bulk_shaped", "Quicpipe, direct path")/d))
	}

	// Setup.
	q, d, w := res.median("setup_delay", "Quicpipe via relay mailbox"), res.median("setup_delay", "direct quic-go"), res.median("setup_delay", "pion WebRTC data channel")
	add("setup vs direct quic-go (25 ms per path)", "≤ 2.2× a direct quic-go connection (2× is the floor)", q/d, q/d <= 2.2,
		fmt.Sprintf("%.1f vs %.1f ms", q, d), "more round trips than the handshake needs, or processing time on the path")
	add("setup vs WebRTC (25 ms per path)", "≤ 0.5× a pion WebRTC data channel", q/w, q/w <= 0.5,
		fmt.Sprintf("%.1f vs %.1f ms", q, w), "see the setup figure")

	// Memory.
	worst := math.NaN()
	var worstCase string
	if f := res.find("memory_per_cid"); f != nil {
		for _, s := range f.Series {
			if strings.Contains(s.Case, "1M") && (math.IsNaN(worst) || s.Median > worst) {
				worst, worstCase = s.Median, s.Case
			}
		}
	}
	add("relay memory per registered CID", "≤ 200 bytes (heap, at 1M CIDs)", worst/200, worst <= 200,
		fmt.Sprintf("%.0f bytes per CID (%s; ratio given against the 200-byte goal)", worst, worstCase),
		"the CID table's per-entry cost is above the goal")

	burstTargets(res, add)
	fleetTargets(res, add)
}

func firstPercent(top, key string) string {
	for _, l := range strings.Split(top, "\n") {
		if strings.Contains(l, key) {
			if f := strings.Fields(l); len(f) > 0 {
				return f[0]
			}
		}
	}
	return ""
}

func orNA(s string) string {
	if s == "" {
		return "n/a"
	}
	return s
}

func ratioText(r float64) string {
	if math.IsNaN(r) || math.IsInf(r, 0) {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", r)
}

// writeSummary writes summary.md into dir, and RESULTS.md beside the
// harness when run from its directory.
func writeSummary(res *Results, dir string, opt options) error {
	if err := os.WriteFile(filepath.Join(dir, "summary.md"), []byte(summaryMarkdown(res, "")), 0o644); err != nil {
		return err
	}
	if b, err := os.ReadFile("go.mod"); err == nil && strings.Contains(string(b), "module github.com/quicpipe/quicpipe/bench") {
		rel, err := filepath.Rel(".", dir)
		if err != nil || strings.HasPrefix(rel, "..") {
			return nil // results outside the harness's directory: links would break
		}
		return os.WriteFile("RESULTS.md", []byte(summaryMarkdown(res, rel+"/")), 0o644)
	}
	return nil
}

func summaryMarkdown(res *Results, prefix string) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# Quicpipe benchmarks: results\n\n")
	w("Run %s, %s mode, %.0f s. ", res.Started, res.Mode, res.Duration)
	keys := make([]string, 0, len(res.Machine))
	for k := range res.Machine {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var m []string
	for _, k := range keys {
		m = append(m, fmt.Sprintf("%s: %s", k, res.Machine[k]))
	}
	w("Machine: %s.\n\n", strings.Join(m, "; "))
	w("Produced by `go run .` in bench/ (see README.md for what each figure means and how it is measured). " +
		"Values are medians over repetitions, with [min – max] and the number of repetitions; every ratio compares medians " +
		"measured in the same run. Raw values: `results.json`, `results.csv`.\n\n")

	w("## Targets (issues 8 and 15)\n\n| target | goal | measured | ratio | met |\n|---|---|---|---|---|\n")
	for _, t := range res.Targets {
		met := "no"
		if t.Met {
			met = "**yes**"
		}
		ratio := ratioText(t.Ratio)
		if !t.Measured {
			met, ratio = "—", "—"
		}
		w("| %s | %s | %s | %s | %s |\n", t.Name, t.Goal, t.Detail, ratio, met)
	}
	w("\n")
	misses := false
	for _, t := range res.Targets {
		if !t.Met && t.Measured {
			if !misses {
				w("### Why targets are missed\n\n")
				misses = true
			}
			w("- **%s** (%s): %s\n", t.Name, ratioText(t.Ratio), t.Why)
		}
	}
	if misses {
		w("\n")
	}

	titles := map[string]string{"capacity": "1. Relay forwarding capacity", "setup": "2. Pipe setup time",
		"bulk": "3. Bulk throughput of one pipe", "memory": "4. Relay memory",
		"fleet": "5. Relay fleet (issue 15)", "tunnel": "6. Relay tunnel against UDP (issue 16)"}
	for _, comp := range []string{"capacity", "setup", "bulk", "memory", "fleet", "tunnel"} {
		var figs []*Figure
		for _, f := range res.Figures {
			if f.Comparison == comp && len(f.Series) > 0 {
				figs = append(figs, f)
			}
		}
		if len(figs) == 0 {
			continue
		}
		w("## %s\n\n", titles[comp])
		for _, f := range figs {
			w("### %s — %s\n\n", f.Title, f.Condition)
			if f.Explanation != "" {
				w("%s\n\n", f.Explanation)
			}
			var bases []*Series
			for _, s := range f.Series {
				if s.Baseline && len(s.Values) > 0 && !f.NoRatios {
					bases = append(bases, s)
				}
			}
			w("| case | median (%s) | [min – max] | n |", f.Unit)
			for _, bs := range bases {
				w(" vs %s |", bs.Case)
			}
			w("\n|---|---|---|---|")
			for range bases {
				w("---|")
			}
			w("\n")
			for _, s := range f.Series {
				if len(s.Values) == 0 {
					continue
				}
				name := s.Case
				if s.Baseline {
					name += " (baseline)"
				}
				w("| %s | %s | [%s – %s] | %d |", name, formatValue(s.Median, f.Unit),
					formatValue(s.Min, f.Unit), formatValue(s.Max, f.Unit), len(s.Values))
				for _, bs := range bases {
					if bs == s {
						w(" — |")
					} else {
						w(" %s |", ratioText(s.Median/bs.Median))
					}
				}
				w("\n")
			}
			w("\n![%s](%s%s.png)\n\n", f.ID, prefix, f.ID)
		}
		if comp == "capacity" && len(res.Profiles) > 0 {
			w("### Where the relay's core goes (perf, cpu-clock, one extra window at saturation)\n\n")
			for _, p := range res.Profiles {
				w("%s (full report: `%s%s`):\n\n```\n%s\n```\n\n", p.Case, prefix, p.File, strings.TrimSpace(p.Top))
			}
		}
	}
	if len(res.Missing) > 0 {
		w("## Missing\n\n")
		for _, m := range res.Missing {
			w("- %s: %s\n", m.What, strings.ReplaceAll(strings.TrimSpace(m.Reason), "\n", " "))
		}
		w("\n")
	}
	if len(res.Notes) > 0 {
		w("## Notes\n\n")
		for _, n := range res.Notes {
			w("- %s\n", n)
		}
		w("\n")
	}
	return b.String()
}

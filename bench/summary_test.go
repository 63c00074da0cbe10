package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSummary renders the targets, the summary and the plots of a
// synthetic run, including a figure with a missing baseline.
func TestSummary(t *testing.T) {
	res := &Results{Started: "now", Mode: "test", Machine: map[string]string{"cpus": "2"}}
	f := res.figure("capacity_per_cpu", "capacity", "per CPU", "veth", "datagrams per relay CPU-second", true)
	for _, v := range []float64{300e3, 320e3, 310e3} {
		f.add("Quicpipe relay (userspace)", false, v)
		f.add("coturn", true, v/1.6)
		f.add("pion/turn", true, v/1.9)
		f.add("reference: recvmmsg+GSO loop", false, v*1.2)
	}
	m := res.figure("capacity_machine_cpu", "capacity", "machine", "veth", "ns per datagram", false)
	m.add("Quicpipe relay (XDP)", false, 2900)
	m.add("bare XDP_TX reflector", true, 2800)
	m.add("Quicpipe relay (userspace)", false, 6000)
	s := res.figure("setup_delay", "setup", "setup", "25 ms", "ms", false)
	s.add("Quicpipe via relay mailbox", false, 158)
	s.add("direct quic-go", true, 79)
	b := res.figure("bulk_shaped", "bulk", "bulk", "shaped", "Mbit/s", true)
	b.add("Quicpipe via relay (userspace)", false, 170)
	b.add(bulkDirect, true, 185)
	b.add(bulkSameRTT, false, 175)
	b.add(bulkSameRTTPkt, true, 171)
	tc := res.figure("tunnel_capacity_per_cpu", "tunnel", "per CPU", "veth", "datagrams per relay CPU-second", true)
	tc.add(tunCapUDPPlain, true, 380e3)
	tc.add(tunCapTunnel, false, 95e3)
	// No WebRTC value: its target must say "not measured".
	res.missing("setup: WebRTC", os.ErrNotExist)
	evaluateTargets(res, 25*time.Millisecond)

	if s := f.get("Quicpipe relay (userspace)"); s.Median != 310e3 || s.Min != 300e3 || s.Max != 320e3 {
		t.Fatalf("summary of series: %+v", s)
	}
	byName := map[string]*Target{}
	for _, tg := range res.Targets {
		byName[tg.Name] = tg
	}
	if tg := byName["userspace relay vs coturn"]; !tg.Measured || !tg.Met || tg.Ratio < 1.59 || tg.Ratio > 1.61 {
		t.Fatalf("coturn target: %+v", tg)
	}
	if tg := byName["userspace relay vs pion/turn"]; tg.Met || tg.Why == "" {
		t.Fatalf("pion/turn target should be missed with a reason: %+v", tg)
	}
	if tg := byName["shaped bulk: Quicpipe via relay (userspace)"]; tg.Met || !strings.Contains(tg.Why, "0.99× that last control") || strings.Contains(tg.Why, "faster") || !strings.Contains(tg.Why, "100 ms against 50 ms") {
		t.Fatalf("shaped bulk target: %+v", tg)
	}
	if tg := byName["setup vs WebRTC (25 ms per path)"]; tg.Measured {
		t.Fatalf("WebRTC target measured without data: %+v", tg)
	}

	dir := t.TempDir()
	if err := res.writeJSON(filepath.Join(dir, "results.json")); err != nil {
		t.Fatal(err)
	}
	if err := res.writeCSV(filepath.Join(dir, "results.csv")); err != nil {
		t.Fatal(err)
	}
	if err := writePlots(res, dir); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"capacity_per_cpu", "capacity_machine_cpu", "setup_delay"} {
		if st, err := os.Stat(filepath.Join(dir, id+".png")); err != nil || st.Size() == 0 {
			t.Fatalf("plot %s: %v", id, err)
		}
	}
	md := summaryMarkdown(res, "x/")
	for _, want := range []string{"| userspace relay vs coturn |", "1.60×", "![capacity_per_cpu](x/capacity_per_cpu.png)",
		"## Missing", "Why targets are missed", "## 6. Relay tunnel against UDP (issue 16)", "| 0.25× |"} {
		if !strings.Contains(md, want) {
			t.Errorf("summary lacks %q", want)
		}
	}
}

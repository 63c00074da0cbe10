// Command bench measures Quicpipe against the alternatives on this machine,
// side by side in one run: relay forwarding capacity (against coturn,
// pion/turn and a bare XDP_TX reflector), pipe setup time (against a direct
// quic-go connection and a pion WebRTC data channel), bulk throughput of one
// pipe (against a direct quic-go connection), relay memory (against
// coturn), the relay fleet on NATS (replication delay, registration
// rate, memory and forwarding capacity of a member against a single relay),
// and the relay's TLS/WebSocket tunnel against UDP (setup, throughput,
// relay CPU per datagram, memory per tunnel). It builds network namespaces
// for the purpose, runs every comparison, and writes results.json,
// results.csv, one PNG per figure and summary.md into results/<date>/,
// copying the summary to RESULTS.md.
//
// It needs root (namespaces, XDP), iproute2, nftables, ethtool, taskset,
// coturn and valgrind; see README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// options are the knobs of one run; quick and full mode fill them.
type options struct {
	mode string

	reps       int     // repetitions of each capacity window and bulk transfer
	capWindow  float64 // seconds per capacity measurement window
	setupReps  int     // dials per setup case
	bulkBare   int64   // bytes per bulk transfer on bare links
	bulkShaped int64   // bytes per bulk transfer on shaped links
	memCIDs    []int   // CID counts of the memory comparison
	memPipes   int     // active pipes in the memory comparison
	turnAllocs int     // coturn allocations in the memory comparison
	delay      time.Duration
	shapeRate  string
	cgRate     float64 // datagrams per second offered to a relay under callgrind
	cgSeconds  float64
	cgReps     int
	only       map[string]bool
	profile    bool // perf profiles of the relay's core
	// fleetDelays is the number of registrations whose replication delay
	// is measured, fleetRegs the registrations of each rate measurement.
	fleetDelays, fleetRegs int
}

var (
	verbose    bool
	caseFilter string
	// noInstructions skips the callgrind counts of the capacity cases.
	noInstructions bool
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func main() {
	// Roles (roles.go) take their own flags after "-role NAME".
	if len(os.Args) > 2 && os.Args[1] == "-role" {
		runRole(os.Args[2], os.Args[3:])
		return
	}
	quick := flag.Bool("quick", false, "quick mode (the default): under 5 minutes")
	full := flag.Bool("full", false, "full mode: more repetitions and longer transfers")
	smoke := flag.Bool("smoke", false, "CI smoke mode: one repetition of everything, every figure produced, no timing asserted")
	out := flag.String("out", "", "results directory (default results/<date-time>)")
	only := flag.String("only", "", "comma-separated comparisons to run: capacity,setup,bulk,memory,fleet,tunnel")
	flag.BoolVar(&verbose, "v", false, "log the processes' standard error")
	flag.StringVar(&caseFilter, "cases", "", "only the capacity cases whose name contains one of these comma-separated strings (=NAME: exactly NAME)")
	flag.BoolVar(&noInstructions, "noinstr", false, "skip the instruction counts (callgrind) of the capacity comparison")
	flag.IntVar(&coturnThreads, "coturn-threads", 0, "coturn's relay-threads (0: relay in the listener thread, its fastest setting on one pinned core)")
	flag.Parse()
	_ = quick
	opt := quickOptions()
	switch {
	case *full:
		opt = fullOptions()
	case *smoke:
		opt = smokeOptions()
	}
	if *only != "" {
		opt.only = map[string]bool{}
		for _, c := range strings.Split(*only, ",") {
			opt.only[strings.TrimSpace(c)] = true
		}
	}
	os.Exit(run(opt, *out))
}

func quickOptions() options {
	return options{mode: "quick", reps: 3, capWindow: 1.5, setupReps: 10, cgReps: 2,
		bulkBare: 256 << 20, bulkShaped: 48 << 20, memCIDs: []int{1000, 10000, 1000000},
		memPipes: 100, turnAllocs: 1000, delay: 25 * time.Millisecond, shapeRate: "200mbit",
		cgRate: 5000, cgSeconds: 1, profile: true, fleetDelays: 300, fleetRegs: 3000}
}

func fullOptions() options {
	o := quickOptions()
	o.mode = "full"
	o.reps, o.capWindow, o.setupReps = 7, 8, 40
	o.bulkBare, o.bulkShaped = 1<<30, 192<<20
	o.memPipes, o.turnAllocs = 500, 10000
	o.cgSeconds, o.cgReps = 3, 5
	o.fleetDelays, o.fleetRegs = 1000, 10000
	return o
}

func smokeOptions() options {
	o := quickOptions()
	o.mode = "smoke"
	o.reps, o.capWindow, o.setupReps = 1, 1, 3
	o.bulkBare, o.bulkShaped = 32<<20, 8<<20
	o.memCIDs = []int{1000, 10000, 1000000}
	o.memPipes, o.turnAllocs = 20, 200
	o.cgReps = 1
	o.profile = false
	o.fleetDelays, o.fleetRegs = 30, 300
	return o
}

func (o options) want(c string) bool { return len(o.only) == 0 || o.only[c] }

func run(opt options, outDir string) int {
	start := time.Now()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench needs root: it creates network namespaces and attaches XDP programs")
		return 2
	}
	for _, tool := range []string{"ip", "nft", "tc", "ethtool", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "bench needs %s: %v\n", tool, err)
			return 2
		}
	}
	if runtime.NumCPU() < 2 {
		fmt.Fprintln(os.Stderr, "bench needs at least 2 CPUs (relay on one, load generator on the other)")
		return 2
	}
	if outDir == "" {
		outDir = filepath.Join("results", start.Format("2006-01-02T15-04-05"))
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	removeStaleNamespaces()

	// A closed log pipe (`go run . | head`) must not kill the run before
	// it cleans up.
	signal.Ignore(syscall.SIGPIPE)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sig
		logf("%v: cleaning up", s)
		closeAllLabs()
		os.Exit(130)
	}()
	defer closeAllLabs()
	defer func() {
		if p := recover(); p != nil {
			closeAllLabs()
			panic(p)
		}
	}()

	res := &Results{Started: start.Format(time.RFC3339), Mode: opt.mode, Machine: machineInfo()}
	ctx := context.Background()
	type comparison struct {
		name string
		f    func(context.Context, *Results, options, string) error
	}
	for _, c := range []comparison{
		{"capacity", runCapacity},
		{"setup", runSetup},
		{"bulk", runBulk},
		{"memory", runMemory},
		{"fleet", runFleet},
		{"tunnel", runTunnel},
	} {
		if !opt.want(c.name) {
			continue
		}
		logf("== %s", c.name)
		t := time.Now()
		if err := c.f(ctx, res, opt, outDir); err != nil {
			res.missing(c.name+" (whole comparison)", err)
		}
		closeAllLabs()
		logf("== %s done in %v", c.name, time.Since(t).Round(time.Second))
	}
	evaluateTargets(res, opt.delay)
	res.Duration = time.Since(start).Seconds()

	failed := false
	for _, step := range []struct {
		name string
		f    func() error
	}{
		{"results.json", func() error { return res.writeJSON(filepath.Join(outDir, "results.json")) }},
		{"results.csv", func() error { return res.writeCSV(filepath.Join(outDir, "results.csv")) }},
		{"plots", func() error { return writePlots(res, outDir) }},
		{"summary.md", func() error { return writeSummary(res, outDir, opt) }},
	} {
		if err := step.f(); err != nil {
			logf("writing %s: %v", step.name, err)
			failed = true
		}
	}
	logf("results in %s (%v)", outDir, time.Since(start).Round(time.Second))
	if failed {
		return 1
	}
	if len(res.Missing) > 0 && opt.mode == "smoke" {
		logf("smoke mode: %d figures missing", len(res.Missing))
		return 1
	}
	return 0
}

func machineInfo() map[string]string {
	m := map[string]string{"cpus": fmt.Sprint(runtime.NumCPU()), "go": runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m["cpu"] = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if out, err := exec.Command("turnserver", "--version").CombinedOutput(); err == nil {
		m["coturn"] = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("git", "-C", "..", "rev-parse", "--short", "HEAD").Output(); err == nil {
		m["quicpipe_commit"] = strings.TrimSpace(string(out))
		if st, err := exec.Command("git", "-C", "..", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
			m["quicpipe_commit"] += " (with uncommitted changes)"
		}
	}
	return m
}

func runWithInput(name string, args []string, input string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(input)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

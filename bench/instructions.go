package main

// Instructions per forwarded datagram, in userspace, counted by valgrind's
// callgrind (this VM exposes no hardware counters to perf: `perf stat -e
// instructions` reports "not supported"). Each userspace relay runs under
// callgrind, pinned as in the capacity runs; the harness zeroes its counters
// (callgrind_control -z), lets it idle for a window, dumps (-d), zeroes
// again, offers datagrams at a fixed moderate rate for the same time, and
// dumps again. Instructions per datagram = (load - idle) / forwarded. Kernel
// instructions are not counted: this is the relay's own code, libraries and
// runtime included.

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

func runInstructions(lab *Lab, res *Results, opt options, tmp string) error {
	if _, err := exec.LookPath("valgrind"); err != nil {
		return fmt.Errorf("valgrind is not installed (apt-get install valgrind): %w", err)
	}
	if _, err := exec.LookPath("callgrind_control"); err != nil {
		return fmt.Errorf("callgrind_control is not installed (part of valgrind): %w", err)
	}
	fig := res.figure("capacity_instructions", "capacity", "Userspace instructions per forwarded datagram (callgrind)",
		fmt.Sprintf("veth, 1200-byte datagrams offered at %.0f/s", opt.cgRate), "instructions per datagram", false)
	fig.Explanation = "Counted by valgrind's callgrind in the relay process only (no kernel): the relay's code, its libraries and its runtime, idle time subtracted. Stable on a noisy machine, unlike CPU time."
	for i, c := range capCases {
		if c.xdp || c.gro || c.offCore || !caseSelected(c) {
			continue
		}
		logf("instructions: %s", c.name)
		if err := instructionsCase(lab, fig, opt, tmp, c, 7100+i); err != nil {
			res.missing("capacity: instructions per datagram, "+c.name, err)
		}
	}
	return nil
}

func instructionsCase(lab *Lab, fig *Figure, opt options, tmp string, c capCase, port int) error {
	if err := c.setLinks(lab); err != nil {
		return err
	}
	dir, err := os.MkdirTemp(tmp, "callgrind-")
	if err != nil {
		return err
	}
	srv, err := startCapServer(lab, c, dir, true)
	if err != nil {
		return err
	}
	defer srv.stop()
	gen, stop, err := startCapGen(lab, srv, port, 1)
	if err != nil {
		return err
	}
	defer stop()
	return countInstructions(lab, fig, opt, dir, c.name, c.baseline, srv.relay.pid(), gen)
}

// countInstructions counts the userspace instructions per datagram of the
// relay process pid under callgrind (its counters dumped into dir), loaded
// by gen (the generator's "run" protocol, gen.go) at opt.cgRate, and adds
// them to fig as case name.
func countInstructions(lab *Lab, fig *Figure, opt options, dir, name string, baseline bool, pid int, gen *proc) error {
	runGen := func(secs float64) error {
		if err := gen.call(10*time.Second, nil, "run", secs, 0, opt.cgRate); err != nil {
			return err
		}
		var ev struct{ Sent int64 }
		return gen.event(time.Duration(secs+60)*time.Second, &ev)
	}
	if err := runGen(1); err != nil { // warm up
		return err
	}
	for rep := 0; rep < opt.cgReps; rep++ {
		// A relay slowed down by callgrind may still be forwarding what
		// its socket (or a tunnel's TCP connection) holds: not in the
		// idle window.
		if _, err := sinkSettled(lab); err != nil {
			return err
		}
		if err := callgrindControl(pid, "-z"); err != nil {
			return err
		}
		time.Sleep(time.Duration(opt.cgSeconds * float64(time.Second)))
		idle, err := callgrindDump(pid, dir)
		if err != nil {
			return err
		}
		f0, err := lab.sinkCount()
		if err != nil {
			return err
		}
		if err := callgrindControl(pid, "-z"); err != nil {
			return err
		}
		if err := runGen(opt.cgSeconds); err != nil {
			return err
		}
		// Let the last datagrams through.
		if _, err := sinkSettled(lab); err != nil {
			return err
		}
		load, err := callgrindDump(pid, dir)
		if err != nil {
			return err
		}
		f1, err := lab.sinkCount()
		if err != nil {
			return err
		}
		fwd := f1 - f0
		if fwd < 100 {
			return fmt.Errorf("only %.0f datagrams forwarded under callgrind", fwd)
		}
		per := (load - idle) / fwd
		fig.add(name, baseline, per)
		logf("  %-28s %8.0f instructions/datagram (%.0f forwarded, idle %.0f, load %.0f)", name, per, fwd, idle, load)
	}
	return nil
}

func callgrindControl(pid int, flag string) error {
	out, err := exec.Command("timeout", "60", "callgrind_control", flag, strconv.Itoa(pid)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK") {
		return fmt.Errorf("callgrind_control %s %d: %v: %s", flag, pid, err, out)
	}
	return nil
}

// callgrindDump dumps the counters and returns the total instructions of
// the new dump.
func callgrindDump(pid int, dir string) (float64, error) {
	before, _ := filepath.Glob(filepath.Join(dir, fmt.Sprintf("callgrind.%d.out.*", pid)))
	if err := callgrindControl(pid, "-d"); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		after, _ := filepath.Glob(filepath.Join(dir, fmt.Sprintf("callgrind.%d.out.*", pid)))
		if len(after) > len(before) {
			sort.Slice(after, func(i, j int) bool { return dumpIndex(after[i]) < dumpIndex(after[j]) })
			if v, err := callgrindTotal(after[len(after)-1]); err == nil {
				return v, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, fmt.Errorf("no callgrind dump from %d", pid)
}

func dumpIndex(path string) int {
	n, _ := strconv.Atoi(path[strings.LastIndexByte(path, '.')+1:])
	return n
}

func callgrindTotal(path string) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "totals:"); ok {
			return strconv.ParseFloat(strings.Fields(v)[0], 64)
		}
	}
	return 0, fmt.Errorf("%s: no totals line (yet)", path)
}

// sinkSettled waits until the sink's count has not changed for 200 ms (30 s
// at most) and returns it.
func sinkSettled(lab *Lab) (float64, error) {
	last, err := lab.sinkCount()
	if err != nil {
		return 0, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		time.Sleep(200 * time.Millisecond)
		n, err := lab.sinkCount()
		if err != nil {
			return 0, err
		}
		if n == last || time.Now().After(deadline) {
			return n, nil
		}
		last = n
	}
}

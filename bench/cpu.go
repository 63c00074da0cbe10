package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is USER_HZ, the unit of /proc/stat and /proc/PID/stat.
const clockTick = 100

// cpuTimes is busy time per CPU (index 0, 1, ...) and in total, from
// /proc/stat: everything but idle and iowait, in seconds.
type cpuTimes struct {
	total float64
	per   []float64
	at    time.Time
}

func readCPUTimes() (cpuTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	t := cpuTimes{at: time.Now()}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		var busy float64
		for i, v := range f[1:] {
			if i == 3 || i == 4 { // idle, iowait
				continue
			}
			if i >= 8 { // guest and guest_nice are already in user and nice
				break
			}
			n, _ := strconv.ParseFloat(v, 64)
			busy += n
		}
		busy /= clockTick
		if f[0] == "cpu" {
			t.total = busy
		} else {
			t.per = append(t.per, busy)
		}
	}
	return t, nil
}

// sub returns the busy seconds between two readings.
func (t cpuTimes) sub(o cpuTimes) cpuTimes {
	d := cpuTimes{total: t.total - o.total, at: t.at}
	for i := range t.per {
		if i < len(o.per) {
			d.per = append(d.per, t.per[i]-o.per[i])
		}
	}
	return d
}

// procCPU returns the user and system CPU seconds of process pid, all its
// threads included.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// After the command: state(0) ppid(1) ... utime(11) stime(12).
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / clockTick, nil
}

// threadRunTime returns the time task pid has spent on a CPU, in seconds,
// from /proc/PID/schedstat: nanoseconds, where /proc/PID/stat counts clock
// ticks (10 ms), too coarse for a kernel thread's short runs.
func threadRunTime(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 0, fmt.Errorf("empty /proc/%d/schedstat", pid)
	}
	ns, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad /proc/%d/schedstat: %w", pid, err)
	}
	return float64(ns) / 1e9, nil
}

// procRSS returns the resident set size of pid in bytes.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for %d", pid)
}

// labCPU is the CPU time of the lab's share of the machine: every process
// living in one of the lab's namespaces, and every kernel thread (softirq
// threads, NAPI threads, workers). It leaves out other processes on a shared
// machine, and the short-lived processes the harness spawns to read
// counters. ticks maps pid to CPU seconds, to difference two readings.
type labCPU struct {
	ticks map[int]float64
}

func (l *Lab) nsInodes() map[uint64]bool {
	m := map[uint64]bool{}
	for _, ns := range l.ns {
		var st syscall.Stat_t
		if syscall.Stat("/run/netns/"+ns, &st) == nil {
			m[st.Ino] = true
		}
	}
	return m
}

const pfKthread = 0x00200000

func readLabCPU(inodes map[uint64]bool) labCPU {
	c := labCPU{ticks: map[int]float64{}}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return c
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
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 13 {
			continue
		}
		flags, _ := strconv.ParseUint(f[6], 10, 64)
		ours := flags&pfKthread != 0
		if !ours {
			var st syscall.Stat_t
			if syscall.Stat("/proc/"+e.Name()+"/ns/net", &st) == nil && inodes[st.Ino] {
				ours = true
			}
		}
		if !ours {
			continue
		}
		u, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		c.ticks[pid] = (u + st) / clockTick
	}
	return c
}

// sub returns the CPU seconds used between two readings by the processes
// present in both.
func (c labCPU) sub(o labCPU) float64 {
	var d float64
	for pid, t := range c.ticks {
		if t0, ok := o.ticks[pid]; ok && t >= t0 {
			d += t - t0
		}
	}
	return d
}

// waitQuiet waits up to max for the rest of the machine (everything but the
// lab and the kernel) to use less than limit CPUs, and returns what it used
// (in CPUs) over the last half second.
func (l *Lab) waitQuiet(limit float64, max time.Duration) float64 {
	deadline := time.Now().Add(max)
	ino := l.nsInodes()
	for {
		c0, l0 := readCPUTimes()
		a := readLabCPU(ino)
		time.Sleep(500 * time.Millisecond)
		c1, _ := readCPUTimes()
		b := readLabCPU(ino)
		if l0 != nil {
			return 0
		}
		foreign := (c1.sub(c0).total - b.sub(a)) * 2 // per second
		if foreign < limit || time.Now().After(deadline) {
			return foreign
		}
	}
}

package main

// The benchmarks run on network namespaces that the harness creates and
// always deletes, even when a run fails or is interrupted:
//
//	A (peer, load generator)  a0 10.77.1.2 ─── g1 10.77.1.1 ┐
//	                                                         G (router) g2 10.77.2.1 ─── r0 10.77.2.2  R (relay)
//	B (peer, sink)            b0 10.77.3.2 ─── g3 10.77.3.1 ┘
//
// The relay reaches both peers through its gateway G, as a relay on a public
// host does (the XDP program answers to the MAC address each frame came from,
// so it must not share a segment with the peers). Direct peer-to-peer traffic
// (a direct quic-go connection, a WebRTC data channel) crosses G once;
// relayed traffic crosses it twice, once on the way to the relay and once on
// the way out.
//
// This kernel has no netem, so one-way delay comes from a userspace delay
// line in G (delay.go): policy routing sends every packet G forwards into a
// TUN device, a process holds it for the configured delay and writes it back,
// and G routes it on. Every peer-to-relay and peer-to-peer path therefore
// gets exactly one delay per direction. Rate limits are tbf qdiscs on both
// ends of every veth.
//
// A loopback lab (newLoopLab) is one namespace L with only its loopback
// interface up.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Addresses of the four-namespace lab.
const (
	addrA = "10.77.1.2"
	addrR = "10.77.2.2"
	addrB = "10.77.3.2"
	gwA   = "10.77.1.1"
	gwR   = "10.77.2.1"
	gwB   = "10.77.3.1"
)

// nsPrefix starts the name of every namespace the harness creates, followed
// by the harness's process id, so that a later run can remove what a killed
// run left behind.
const nsPrefix = "qpb"

// Lab is a set of network namespaces and the processes running in them.
type Lab struct {
	name  string
	ns    map[string]string // short name ("a", "g", ...) → namespace name
	order []string

	mu    sync.Mutex
	procs []*proc
	links []func() // extra cleanup, run before the namespaces go
}

var (
	labsMu sync.Mutex
	labs   = map[*Lab]bool{}
)

func registerLab(l *Lab) {
	labsMu.Lock()
	labs[l] = true
	labsMu.Unlock()
}

// closeAllLabs tears down every lab still open (on a signal or at exit).
func closeAllLabs() {
	labsMu.Lock()
	ls := make([]*Lab, 0, len(labs))
	for l := range labs {
		ls = append(ls, l)
	}
	labsMu.Unlock()
	for _, l := range ls {
		l.Close()
	}
}

var labSeq int

func (l *Lab) addNS(short string) error {
	name := fmt.Sprintf("%s-%d-%d%s", nsPrefix, os.Getpid(), labSeq, short)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
	}
	l.ns[short] = name
	l.order = append(l.order, short)
	return l.run(short, "ip", "link", "set", "lo", "up")
}

func newLabBase(name string) *Lab {
	labSeq++
	l := &Lab{name: name, ns: map[string]string{}}
	registerLab(l)
	return l
}

// newLoopLab returns a lab of one namespace, "l", with loopback up.
func newLoopLab() (*Lab, error) {
	l := newLabBase("loopback")
	if err := l.addNS("l"); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// newRelayLab builds the A, G, R, B topology above.
func newRelayLab() (*Lab, error) {
	l := newLabBase("veth")
	err := l.build()
	if err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func (l *Lab) build() error {
	for _, s := range []string{"a", "g", "r", "b"} {
		if err := l.addNS(s); err != nil {
			return err
		}
	}
	for _, ln := range []struct{ gw, peer, ns, gwAddr, addr string }{
		{"g1", "a0", "a", gwA, addrA},
		{"g2", "r0", "r", gwR, addrR},
		{"g3", "b0", "b", gwB, addrB},
	} {
		steps := [][]string{
			{"g", "ip", "link", "add", ln.gw, "type", "veth", "peer", "name", ln.peer, "netns", l.ns[ln.ns]},
			{"g", "ip", "addr", "add", ln.gwAddr + "/24", "dev", ln.gw},
			{"g", "ip", "link", "set", ln.gw, "up"},
			{ln.ns, "ip", "addr", "add", ln.addr + "/24", "dev", ln.peer},
			{ln.ns, "ip", "link", "set", ln.peer, "up"},
			{ln.ns, "ip", "route", "add", "default", "via", ln.gwAddr},
		}
		for _, s := range steps {
			if err := l.run(s[0], s[1:]...); err != nil {
				return err
			}
		}
	}
	if err := l.run("g", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"); err != nil {
		return err
	}
	return nil
}

// checksumOffloadOff makes the peers compute UDP checksums in software. The
// XDP program updates checksums incrementally and needs complete ones; a
// socket sending over a veth leaves them partial (see xdp/README.md). It is
// applied in every variant of a comparison that includes XDP, so that all
// variants pay the same.
func (l *Lab) checksumOffloadOff() error {
	for _, p := range [][2]string{{"a", "a0"}, {"b", "b0"}} {
		if err := l.run(p[0], "ethtool", "-K", p[1], "tx", "off"); err != nil {
			return err
		}
	}
	return nil
}

// shapeLatency bounds each tbf queue: it holds this long of data at the
// shaped rate.
const shapeLatency = 50 * time.Millisecond

// shape limits every link in both directions with tbf: the peers' links
// to rate, the relay's link (g2-r0) to relayRate.
func (l *Lab) shape(rate, relayRate string) error {
	for _, p := range [][2]string{{"a", "a0"}, {"g", "g1"}, {"g", "g2"}, {"r", "r0"}, {"g", "g3"}, {"b", "b0"}} {
		r := rate
		if p[1] == "g2" || p[1] == "r0" {
			r = relayRate
		}
		if err := l.run(p[0], "tc", "qdisc", "replace", "dev", p[1], "root", "tbf",
			"rate", r, "burst", "64kb", "latency", shapeLatency.String()); err != nil {
			return err
		}
	}
	return nil
}

// run runs a command in namespace short, with a timeout.
func (l *Lab) run(short string, args ...string) error {
	_, err := l.output(short, args...)
	return err
}

func (l *Lab) output(short string, args ...string) (string, error) {
	ns, ok := l.ns[short]
	if !ok {
		return "", fmt.Errorf("lab has no namespace %q", short)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"netns", "exec", ns}, args...)
	out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("[%s] %s: %v: %s", short, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// start starts argv in namespace short, pinned to cpu (or unpinned if cpu is
// negative). The process is stopped when the lab closes.
func (l *Lab) start(name, short string, cpu int, argv ...string) (*proc, error) {
	ns, ok := l.ns[short]
	if !ok {
		return nil, fmt.Errorf("lab has no namespace %q", short)
	}
	// No nice: a process that outranks ksoftirqd on its core starves the
	// softirq work deferred to it, and datagrams are dropped at the
	// backlog instead of being forwarded.
	full := []string{"ip", "netns", "exec", ns}
	if cpu >= 0 {
		full = append(full, "taskset", "-c", fmt.Sprint(cpu))
	}
	full = append(full, argv...)
	p, err := startProc(name, full)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, nil
}

// startRole starts this program in a role (see roles.go).
func (l *Lab) startRole(name, short string, cpu int, role string, args ...string) (*proc, error) {
	argv := append([]string{selfExe, "-role", role}, args...)
	p, err := l.start(name, short, cpu, argv...)
	if err != nil {
		return nil, err
	}
	if _, err := p.expect("ready", 60*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return p, nil
}

// onClose registers extra cleanup.
func (l *Lab) onClose(f func()) {
	l.mu.Lock()
	l.links = append(l.links, f)
	l.mu.Unlock()
}

// Close stops every process and deletes the namespaces (and with them their
// links, qdiscs, nftables rules and XDP programs).
func (l *Lab) Close() {
	labsMu.Lock()
	if !labs[l] {
		labsMu.Unlock()
		return
	}
	delete(labs, l)
	labsMu.Unlock()
	l.mu.Lock()
	procs, links := l.procs, l.links
	l.procs, l.links = nil, nil
	l.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop()
	}
	for i := len(links) - 1; i >= 0; i-- {
		links[i]()
	}
	for i := len(l.order) - 1; i >= 0; i-- {
		ns := l.ns[l.order[i]]
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			logf("cleanup: ip netns del %s: %v %s", ns, err, out)
		}
	}
}

// removeStaleNamespaces deletes namespaces left by earlier runs whose
// process is gone.
func removeStaleNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], nsPrefix+"-") {
			continue
		}
		parts := strings.Split(f[0], "-")
		if len(parts) < 3 {
			continue
		}
		if _, err := os.Stat("/proc/" + parts[1]); err == nil {
			continue // its harness is still running
		}
		// Kill anything still running inside before deleting it.
		if pids, err := exec.Command("ip", "netns", "pids", f[0]).Output(); err == nil {
			for _, p := range strings.Fields(string(pids)) {
				exec.Command("kill", "-9", p).Run()
			}
		}
		exec.Command("ip", "netns", "del", f[0]).Run()
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), nsPrefix+"-*"))
	for _, d := range dirs {
		parts := strings.Split(filepath.Base(d), "-")
		if len(parts) < 3 {
			continue
		}
		if _, err := strconv.Atoi(parts[1]); err != nil {
			continue
		}
		if _, err := os.Stat("/proc/" + parts[1]); err == nil {
			continue
		}
		os.RemoveAll(d)
	}
}

// tempDir makes a temporary directory removed when the lab closes.
func tempDir(l *Lab, prefix string) (string, error) {
	// The harness's process id in the name lets a later run remove what a
	// killed one left (removeStaleNamespaces).
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s-%d-%s", nsPrefix, os.Getpid(), prefix))
	if err != nil {
		return "", err
	}
	l.onClose(func() { os.RemoveAll(dir) })
	return dir, nil
}

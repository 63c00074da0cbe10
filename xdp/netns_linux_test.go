//go:build linux

package xdp

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// netns is a network namespace created by a test and deleted at its end.
type netns struct {
	name string
}

// newNetns creates a uniquely named namespace with its loopback up.
func newNetns(t *testing.T, role string) netns {
	t.Helper()
	var r [4]byte
	rand.Read(r[:])
	n := netns{fmt.Sprintf("qpxdp-%d-%s-%s", os.Getpid(), hex.EncodeToString(r[:]), role)}
	run(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.name, err, out)
		}
	})
	// No duplicate address detection: addresses, link-local ones included,
	// are usable at once.
	n.exec(t, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	n.ip(t, "link", "set", "lo", "up")
	return n
}

// run runs a command and fails the test if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ip runs ip(8) in the namespace.
func (n netns) ip(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"-n", n.name}, args...)...)
}

// exec runs a command in the namespace.
func (n netns) exec(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", n.name}, args...)...)
}

// do runs fn on an OS thread that has entered the namespace. Sockets, links
// and XDP attachments made by fn belong to the namespace. The thread is
// never handed back to the Go scheduler: it ends with the goroutine.
func (n netns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no unlock: the thread dies with this goroutine
		f, err := os.Open("/run/netns/" + n.name)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// listenUDP opens a UDP socket on addr in the namespace.
func (n netns) listenUDP(t *testing.T, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := n.do(func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// snmp returns the namespace's UDP counters by name ("Udp:InCsumErrors",
// "Udp6InCsumErrors", ...).
func (n netns) snmp(t *testing.T) map[string]uint64 {
	t.Helper()
	m := make(map[string]uint64)
	// /proc/net/snmp: a header line of names, then a line of values.
	lines := strings.Split(n.exec(t, "cat", "/proc/net/snmp"), "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "Udp:" || len(values) != len(names) {
			continue
		}
		for j := 1; j < len(names); j++ {
			v, _ := strconv.ParseUint(values[j], 10, 64)
			m["Udp:"+names[j]] = v
		}
		break
	}
	// /proc/net/snmp6: one "name value" per line.
	for _, line := range strings.Split(n.exec(t, "cat", "/proc/net/snmp6"), "\n") {
		if f := strings.Fields(line); len(f) == 2 && strings.HasPrefix(f[0], "Udp6") {
			v, _ := strconv.ParseUint(f[1], 10, 64)
			m[f[0]] = v
		}
	}
	return m
}

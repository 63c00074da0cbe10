//go:build linux

package xdp

import (
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/quicpipe/quicpipe/internal/netlab"
)

// netns is a network namespace of an internal/netlab lab, deleted at the end
// of the test, with the helpers these tests use.
type netns struct{ *netlab.NS }

// newNetns creates a uniquely named namespace with its loopback up and
// without duplicate address detection, so that addresses, link-local ones
// included, are usable at once.
func newNetns(t *testing.T, role string) netns {
	t.Helper()
	n := netns{netlab.New(t).NS(role)}
	n.exec(t, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
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
	return n.Run(append([]string{"ip"}, args...)...)
}

// exec runs a command in the namespace.
func (n netns) exec(t *testing.T, args ...string) string {
	t.Helper()
	return n.Run(args...)
}

// listenUDP opens a UDP socket on addr in the namespace.
func (n netns) listenUDP(t *testing.T, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := n.ListenUDP("udp", addr.String())
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
	m, err := n.UDPCounters()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

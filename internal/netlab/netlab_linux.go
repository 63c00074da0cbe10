package netlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quicpipe/quicpipe/internal/netns"
)

// prefix starts the name of every namespace a lab creates; the process ID
// follows, so that leftovers of dead processes can be told apart.
const prefix = "qplab"

// MaxNamespaces bounds the namespaces one lab may create.
const MaxNamespaces = 12

// cmdTimeout bounds each command a lab runs.
const cmdTimeout = 20 * time.Second

var (
	checkOnce sync.Once
	checkErr  error
)

// Available reports why labs cannot be built here, or nil.
func Available() error {
	checkOnce.Do(func() {
		if os.Geteuid() != 0 {
			checkErr = fmt.Errorf("needs root")
			return
		}
		for _, c := range []string{"ip", "nft"} {
			if _, err := exec.LookPath(c); err != nil {
				checkErr = fmt.Errorf("needs %s in PATH", c)
				return
			}
		}
		if _, err := os.Stat("/dev/net/tun"); err != nil {
			checkErr = fmt.Errorf("needs /dev/net/tun for emulated links: %v", err)
			return
		}
		name := fmt.Sprintf("%s%d-probe", prefix, os.Getpid())
		if out, err := run(nil, "ip", "netns", "add", name); err != nil {
			checkErr = fmt.Errorf("cannot create a network namespace: %v: %s", err, out)
			return
		}
		run(nil, "ip", "netns", "del", name)
	})
	return checkErr
}

// Lab is a set of namespaces owned by one test.
type Lab struct {
	t  testing.TB
	id string

	mu  sync.Mutex
	nss []*NS
}

// NS is one network namespace of a lab.
type NS struct {
	Name string
	lab  *Lab
	file *os.File
}

// New returns an empty lab, or skips the test if labs cannot be built
// here. The lab's namespaces are deleted when the test ends.
func New(t testing.TB) *Lab {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("network namespace lab unavailable: %v", err)
	}
	sweep()
	var b [3]byte
	rand.Read(b[:])
	l := &Lab{t: t, id: hex.EncodeToString(b[:])}
	t.Cleanup(l.destroy)
	return l
}

// sweep deletes the namespaces of lab processes that no longer exist.
func sweep() {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			run(nil, "ip", "netns", "del", e.Name())
		}
	}
}

func (l *Lab) destroy() {
	l.mu.Lock()
	nss := l.nss
	l.nss = nil
	l.mu.Unlock()
	for i := len(nss) - 1; i >= 0; i-- {
		ns := nss[i]
		ns.file.Close()
		if out, err := run(nil, "ip", "netns", "del", ns.Name); err != nil {
			l.t.Errorf("netlab: deleting namespace %s: %v: %s", ns.Name, err, out)
		}
	}
}

// NS creates a namespace; role names it in logs (a few letters).
func (l *Lab) NS(role string) *NS {
	l.t.Helper()
	l.mu.Lock()
	if len(l.nss) >= MaxNamespaces {
		l.mu.Unlock()
		l.t.Fatalf("netlab: more than %d namespaces", MaxNamespaces)
	}
	l.mu.Unlock()
	name := fmt.Sprintf("%s%d-%s-%s", prefix, os.Getpid(), l.id, role)
	if out, err := run(nil, "ip", "netns", "add", name); err != nil {
		l.t.Fatalf("netlab: ip netns add %s: %v: %s", name, err, out)
	}
	f, err := os.Open(filepath.Join("/run/netns", name))
	if err != nil {
		run(nil, "ip", "netns", "del", name)
		l.t.Fatalf("netlab: %v", err)
	}
	ns := &NS{Name: name, lab: l, file: f}
	l.mu.Lock()
	l.nss = append(l.nss, ns)
	l.mu.Unlock()
	ns.Run("ip", "link", "set", "lo", "up")
	return ns
}

// Link joins a and b with a veth pair: interface aIf in a with address
// aAddr (CIDR, may be empty), bIf in b with bAddr.
func (l *Lab) Link(a *NS, aIf, aAddr string, b *NS, bIf, bAddr string) {
	l.t.Helper()
	// Both ends are created inside their namespaces: nothing appears in
	// the test's own namespace, and each namespace may reuse names.
	l.host("ip", "link", "add", aIf, "netns", a.Name, "type", "veth", "peer", "name", bIf, "netns", b.Name)
	for _, side := range []struct {
		ns        *NS
		ifc, addr string
	}{{a, aIf, aAddr}, {b, bIf, bAddr}} {
		if side.addr != "" {
			side.ns.Run("ip", "addr", "add", side.addr, "dev", side.ifc)
		}
		side.ns.Run("ip", "link", "set", side.ifc, "up")
	}
}

func (l *Lab) host(args ...string) {
	l.t.Helper()
	if out, err := run(nil, args...); err != nil {
		l.t.Fatalf("netlab: %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Run runs a command inside the namespace and fails the test if it fails.
func (n *NS) Run(args ...string) string {
	n.lab.t.Helper()
	out, err := n.Try(args...)
	if err != nil {
		n.lab.t.Fatalf("netlab: in %s: %s: %v: %s", n.Name, strings.Join(args, " "), err, out)
	}
	return out
}

// Try runs a command inside the namespace and returns its output.
func (n *NS) Try(args ...string) (string, error) {
	return run(nil, append([]string{"ip", "netns", "exec", n.Name}, args...)...)
}

// Nft loads an nftables ruleset into the namespace.
func (n *NS) Nft(ruleset string) {
	n.lab.t.Helper()
	out, err := run([]byte(ruleset), "ip", "netns", "exec", n.Name, "nft", "-f", "-")
	if err != nil {
		n.lab.t.Fatalf("netlab: nft in %s: %v: %s\n%s", n.Name, err, out, ruleset)
	}
}

// Forwarding turns on IPv4 forwarding in the namespace (a router).
func (n *NS) Forwarding() {
	n.lab.t.Helper()
	// /proc/sys/net shows the namespace of the thread that opens it.
	err := n.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0) })
	if err != nil {
		n.lab.t.Fatalf("netlab: forwarding in %s: %v", n.Name, err)
	}
}

// ListenUDP opens a UDP socket inside the namespace.
func (n *NS) ListenUDP(network, addr string) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := netns.Do(n.file, func() error {
		a, err := net.ResolveUDPAddr(network, addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP(network, a)
		return err
	})
	return c, err
}

// Do runs fn on a thread inside the namespace (see netns.Do).
func (n *NS) Do(fn func() error) error { return netns.Do(n.file, fn) }

func run(stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// UDPCounters returns the namespace's UDP counters by name: "Udp:InErrors",
// "Udp:InCsumErrors" and the like from /proc/net/snmp, "Udp6InCsumErrors"
// and the like from /proc/net/snmp6.
func (n *NS) UDPCounters() (map[string]uint64, error) {
	m := make(map[string]uint64)
	snmp, err := n.Try("cat", "/proc/net/snmp")
	if err != nil {
		return nil, err
	}
	// /proc/net/snmp: a line of names, then a line of values.
	lines := strings.Split(snmp, "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "Udp:" || len(values) != len(names) {
			continue
		}
		for j := 1; j < len(names); j++ {
			m["Udp:"+names[j]], _ = strconv.ParseUint(values[j], 10, 64)
		}
		break
	}
	snmp6, err := n.Try("cat", "/proc/net/snmp6")
	if err != nil {
		return nil, err
	}
	// /proc/net/snmp6: one "name value" per line.
	for _, line := range strings.Split(snmp6, "\n") {
		if f := strings.Fields(line); len(f) == 2 && strings.HasPrefix(f[0], "Udp6") {
			m[f[0]], _ = strconv.ParseUint(f[1], 10, 64)
		}
	}
	return m, nil
}

// Netlink constants of ctnetlink (linux/netfilter/nfnetlink_conntrack.h)
// that x/sys/unix does not define.
const ipctnlMsgCtDelete = 2

// FlushConntrack deletes every connection tracking entry of the namespace,
// as `conntrack -F` does: a NAT router then forgets its mappings, and the
// next packet of each flow gets a new one (a NAT rebinding).
func (n *NS) FlushConntrack() {
	n.lab.t.Helper()
	err := n.Do(func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		if err != nil {
			return fmt.Errorf("netlink socket: %w", err)
		}
		defer unix.Close(fd)
		// nlmsghdr (16 bytes), then nfgenmsg: family, version, resource
		// ID. A delete without a tuple flushes the table; version 0 with
		// AF_UNSPEC flushes every family.
		msg := make([]byte, unix.NLMSG_HDRLEN+4)
		binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
		binary.NativeEndian.PutUint16(msg[4:], unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtDelete)
		binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
		binary.NativeEndian.PutUint32(msg[8:], 1) // sequence
		msg[16] = unix.AF_UNSPEC
		if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return fmt.Errorf("netlink send: %w", err)
		}
		buf := make([]byte, 4096)
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
			return err
		}
		nr, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:nr])
		if err != nil {
			return fmt.Errorf("netlink answer: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
				if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
					return fmt.Errorf("conntrack flush: %w", syscall.Errno(-e))
				}
				return nil
			}
		}
		return fmt.Errorf("conntrack flush: no acknowledgment")
	})
	if err != nil {
		n.lab.t.Fatalf("netlab: flushing conntrack in %s: %v", n.Name, err)
	}
}

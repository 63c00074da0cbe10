package netlab

import (
	"context"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestProcAndRoutes runs a process inside a namespace (it sees the
// namespace's interfaces, and dies with Kill), dials from one namespace to
// a listener in another, and sets a multipath route.
//
//	a 10.8.1.1 ─ 10.8.1.2 b 10.8.2.2 ─ 10.8.2.1 c
func TestProcAndRoutes(t *testing.T) {
	l := New(t)
	a, b, c := l.NS("a"), l.NS("b"), l.NS("c")
	l.Link(a, "b0", "10.8.1.1/24", b, "a0", "10.8.1.2/24")
	l.Link(b, "c0", "10.8.2.2/24", c, "b0", "10.8.2.1/24")

	p := b.Start("sh", nil, "sh", "-c", "ip -o -4 addr show dev c0; echo ready; exec sleep 60")
	if got := p.Match(regexp.MustCompile(`inet (\S+)`), 10*time.Second); got != "10.8.2.2/24" {
		t.Errorf("the process in b sees %s on c0, want 10.8.2.2/24", got)
	}
	p.Match(regexp.MustCompile(`ready`), 10*time.Second)
	p.Kill()
	select {
	case <-p.Done():
	default:
		t.Fatal("Kill returned before the process exited")
	}

	var ln net.Listener
	if err := b.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "10.8.1.2:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := a.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("from a to b: %q, %v", buf, err)
	}
	conn.Close()
	if _, err := c.DialContext(ctx, "tcp", ln.Addr().String()); err == nil {
		t.Error("c reached b's 10.8.1.2 without a route")
	}

	b.Sysctl("net.ipv4.fib_multipath_hash_policy", "1")
	if got := b.Run("cat", "/proc/sys/net/ipv4/fib_multipath_hash_policy"); got != "1" {
		t.Errorf("fib_multipath_hash_policy in b is %q", got)
	}
	b.Multipath("192.0.2.1/32", "10.8.1.1", "10.8.2.1")
	route := b.Run("ip", "route", "show", "192.0.2.1/32")
	if !strings.Contains(route, "via 10.8.1.1") || !strings.Contains(route, "via 10.8.2.1") {
		t.Errorf("multipath route in b:\n%s", route)
	}
	b.Multipath("192.0.2.1/32", "10.8.2.1")
	if route := b.Run("ip", "route", "show", "192.0.2.1/32"); strings.Contains(route, "10.8.1.1") || !strings.Contains(route, "via 10.8.2.1") {
		t.Errorf("route in b after withdrawing a next hop:\n%s", route)
	}
}

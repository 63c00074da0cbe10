//go:build linux

package netlab

import (
	"net"
	"os"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/internal/netns"
)

// TestLab builds two namespaces joined by an emulated link and checks that
// sockets live in their namespaces, that the link delays and paces as
// asked, and that the namespaces go away with the lab.
//
//	a 10.9.0.1 ─(tun, 5 ms each way, 50 Mbit/s)─ 10.9.0.2 b
func TestLab(t *testing.T) {
	var names []string
	t.Run("build", func(t *testing.T) {
		l := New(t)
		a, b := l.NS("a"), l.NS("b")
		names = append(names, a.Name, b.Name)
		l.ShapedLink(a, "tun0", "10.9.0.1", b, "tun0", "10.9.0.2", Shape{Delay: 5 * time.Millisecond, RateMbit: 50})

		ca, err := a.ListenUDP("udp4", "10.9.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ca.Close()
		cb, err := b.ListenUDP("udp4", "10.9.0.2:0")
		if err != nil {
			t.Fatal(err)
		}
		defer cb.Close()
		ns, err := netns.Of(ca)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		if cur, err := netns.IsCurrent(ns); err != nil || cur {
			t.Errorf("a socket of the lab is in the test's namespace (%v)", err)
		}

		// Round trip: 2×5 ms.
		to := cb.LocalAddr().(*net.UDPAddr).AddrPort()
		buf := make([]byte, 1500)
		start := time.Now()
		if _, err := ca.WriteToUDPAddrPort([]byte("ping"), to); err != nil {
			t.Fatal(err)
		}
		cb.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, from, err := cb.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatal(err)
		}
		cb.WriteToUDPAddrPort([]byte("pong"), from)
		ca.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := ca.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatal(err)
		}
		rtt := time.Since(start)
		if rtt < 10*time.Millisecond || rtt > 200*time.Millisecond {
			t.Errorf("round trip %v over a 5 ms link", rtt)
		}

		// A burst of 48 datagrams of 1250 bytes fits the queue (a round
		// trip's worth, 64 KiB at least) and takes 9.6 ms at 50 Mbit/s,
		// plus the 5 ms delay.
		const n = 48
		payload := make([]byte, 1250)
		start = time.Now()
		for range n {
			ca.WriteToUDPAddrPort(payload, to)
		}
		got := 0
		cb.SetReadDeadline(time.Now().Add(3 * time.Second))
		for got < n {
			if _, _, err := cb.ReadFromUDPAddrPort(buf); err != nil {
				break
			}
			got++
		}
		took := time.Since(start)
		if got != n || took < 14*time.Millisecond {
			t.Errorf("%d of %d datagrams in %v through a 50 Mbit/s link", got, n, took)
		}
		t.Logf("round trip %v; burst in %v", rtt.Round(time.Microsecond), took.Round(time.Microsecond))
	})
	for _, name := range names {
		if _, err := os.Stat("/run/netns/" + name); err == nil {
			t.Errorf("namespace %s outlived its lab", name)
		}
	}
}

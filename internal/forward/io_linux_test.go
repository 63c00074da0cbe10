package forward

import (
	"net/netip"
	"slices"
	"testing"
)

// TestQueueCoalesces checks how forwarded datagrams are grouped into send
// messages: a run for one destination becomes one GSO message, ended by a
// shorter datagram, another destination, or the segment limit.
func TestQueueCoalesces(t *testing.T) {
	g := newForwardRig(t, 1200)
	if !g.c.io.gso {
		t.Skip("the kernel does not offer UDP_SEGMENT on this socket")
	}
	io := &g.c.io
	io.grow(maxGSOSegments + 8)
	d1 := &Dest{AP: netip.MustParseAddrPort("127.0.0.1:1")}
	d2 := &Dest{AP: netip.MustParseAddrPort("127.0.0.1:2")}
	buf := make([]byte, 1200)
	type pkt struct {
		n int
		d *Dest
	}
	for _, tc := range []struct {
		name string
		pkts []pkt
		want []int // segments per message
	}{
		{"one run", []pkt{{1200, d1}, {1200, d1}, {1200, d1}}, []int{3}},
		{"shorter datagram ends a run", []pkt{{1200, d1}, {700, d1}, {1200, d1}}, []int{2, 1}},
		{"longer datagram starts a new message", []pkt{{700, d1}, {1200, d1}}, []int{1, 1}},
		{"destinations alternate", []pkt{{1200, d1}, {1200, d2}, {1200, d1}}, []int{1, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			io.ns, io.niov = 0, 0
			for _, p := range tc.pkts {
				io.queue(buf[:p.n], p.d)
			}
			var got []int
			for i := range io.ns {
				got = append(got, io.smeta[i].segs)
				if int(io.shdrs[i].Hdr.Iovlen) != io.smeta[i].segs {
					t.Fatalf("message %d has %d iovecs for %d segments", i, io.shdrs[i].Hdr.Iovlen, io.smeta[i].segs)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("segments per message %v, want %v", got, tc.want)
			}
			io.ns, io.niov = 0, 0
		})
	}
	t.Run("adjacent datagrams share an iovec", func(t *testing.T) {
		// The datagrams of one GRO read lie one after the other: a run
		// of them leaves as one message with one iovec over all of them.
		io.ns, io.niov = 0, 0
		burst := make([]byte, 3*1200+500)
		for _, r := range [][2]int{{0, 1200}, {1200, 2400}, {2400, 3600}, {3600, 4100}} {
			io.queue(burst[r[0]:r[1]], d1)
		}
		if io.ns != 1 || io.smeta[0].segs != 4 || io.shdrs[0].Hdr.Iovlen != 1 || int(io.siovs[0].Len) != len(burst) {
			t.Fatalf("%d messages, %d segments, %d iovecs of %d bytes; want 1, 4, 1 of %d",
				io.ns, io.smeta[0].segs, io.shdrs[0].Hdr.Iovlen, io.siovs[0].Len, len(burst))
		}
		io.ns, io.niov = 0, 0
	})
	t.Run("segment limit", func(t *testing.T) {
		io.ns, io.niov = 0, 0
		for range maxGSOSegments + 1 {
			io.queue(buf[:100], d1)
		}
		if io.ns != 2 || io.smeta[0].segs != maxGSOSegments {
			t.Fatalf("%d messages, first with %d segments; want 2 and %d", io.ns, io.smeta[0].segs, maxGSOSegments)
		}
		io.ns, io.niov = 0, 0
	})
}

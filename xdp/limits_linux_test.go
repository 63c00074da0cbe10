//go:build linux

package xdp

import (
	"net/netip"
	"testing"
	"time"
)

// TestFilterSources runs the program with Config.FilterSources: a datagram
// for a known CID is forwarded only from an allowed source address and port,
// over IPv4 and IPv6, and goes to userspace otherwise; removing the source
// takes the permission back.
func TestFilterSources(t *testing.T) {
	p := loadTest(t, Config{Ports: relayPorts, FilterSources: true})
	if err := p.Put(cidB4, peerB4, relay4); err != nil {
		t.Fatal(err)
	}
	if err := p.Put(cidB6, peerB6, relay6); err != nil {
		t.Fatal(err)
	}
	otherPort := func(ap netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(ap.Addr(), ap.Port()+1) }
	runCounted(t, p, v4(cidB4).bytes(), PassUnknownSource)
	runCounted(t, p, v6(cidB6).bytes(), PassUnknownSource)
	for _, src := range []netip.AddrPort{peerA4, peerA6} {
		if err := p.AllowSource(src); err != nil {
			t.Fatal(err)
		}
	}
	out := runCounted(t, p, v4(cidB4).bytes(), ForwardedIPv4)
	checkForwarded(t, v4(cidB4).bytes(), out, relay4, peerB4)
	runCounted(t, p, v6(cidB6).bytes(), ForwardedIPv6)
	runCounted(t, p, with(v4(cidB4), func(f *frame) { f.src = otherPort(peerA4) }).bytes(), PassUnknownSource)
	runCounted(t, p, with(v6(cidB6), func(f *frame) { f.src = otherPort(peerA6) }).bytes(), PassUnknownSource)
	// IPv4-mapped is the same source.
	if err := p.RemoveSource(netip.AddrPortFrom(netip.AddrFrom16(peerA4.Addr().As16()), peerA4.Port())); err != nil {
		t.Fatal(err)
	}
	runCounted(t, p, v4(cidB4).bytes(), PassUnknownSource)
	if err := p.RemoveSource(peerA4); err != nil {
		t.Errorf("removing a source twice: %v", err)
	}
}

// TestRelaySCID: a long-header packet whose source CID is a relay's (12
// bytes, high bit set) is never forwarded, even for a known DCID.
func TestRelaySCID(t *testing.T) {
	p := loadWithEntries(t)
	relayReply := func(typ byte) []byte {
		b := []byte{0xc0 | typ<<4 | 0x01, 0, 0, 0, 1, CIDLen}
		b = append(b, cidB4[:]...)
		b = append(b, CIDLen)
		b = append(b, cidRelay[:]...)
		return append(b, make([]byte, 40)...)
	}
	runCounted(t, p, with(v4(cidB4), func(f *frame) { f.payload = relayReply(typeInitial) }).bytes(), PassRelaySCID)
	runCounted(t, p, with(v4(cidB4), func(f *frame) { f.payload = relayReply(typeHandshake) }).bytes(), PassRelaySCID)
	// A peer's SCID (high bit clear) is forwarded.
	peer := relayReply(typeHandshake)
	peer[7+CIDLen] &^= 0x80
	runCounted(t, p, with(v4(cidB4), func(f *frame) { f.payload = peer }).bytes(), ForwardedIPv4)
}

// TestRateCaps sends bursts through the program's token buckets: a bucket
// forwards its one-second burst and drops the rest (DropRateLimit), CIDs in
// other buckets are not affected, the total cap binds all of them, and a
// reset bucket is full again.
func TestRateCaps(t *testing.T) {
	const pps = 50
	p := loadTest(t, Config{Ports: relayPorts, MaxPacketsPerSecond: pps, MaxTotalPacketsPerSecond: 3 * pps})
	cids := [][CIDLen]byte{testCID(0x31), testCID(0x32), testCID(0x33), testCID(0x34)}
	for i, c := range cids {
		if err := p.PutBucket(c, peerB4, relay4, uint32(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.PutBucket(testCID(0x35), peerB4, relay4, DefaultMapSize+1); err == nil {
		t.Error("PutBucket accepted a bucket above Config.Buckets")
	}
	burst := func(cid [CIDLen]byte, n int) (tx, dropped int) {
		for range n {
			a, _, err := p.Run(v4(cid).bytes())
			if err != nil {
				t.Fatal(err)
			}
			switch a {
			case ActionTX:
				tx++
			case ActionDrop:
				dropped++
			default:
				t.Fatalf("action %d, want TX or DROP", a)
			}
		}
		return tx, dropped
	}
	start := time.Now()
	tx, dropped := burst(cids[0], 3*pps)
	// The burst, plus what refills while it runs.
	limit := pps + int(time.Since(start).Seconds()*pps) + 1
	if tx < pps || tx > limit || dropped != 3*pps-tx {
		t.Errorf("one bucket: %d forwarded, %d dropped of %d; want %d to %d forwarded", tx, dropped, 3*pps, pps, limit)
	}
	if tx, _ := burst(cids[1], pps); tx != pps {
		t.Errorf("another bucket forwarded %d of its burst of %d", tx, pps)
	}
	// The total allows 3*pps: buckets 1 and 2 took about 2*pps.
	tx3, _ := burst(cids[2], pps)
	tx4, _ := burst(cids[3], pps)
	if tx3+tx4 > pps+limit-pps+2 {
		t.Errorf("total cap: buckets 3 and 4 forwarded %d+%d beyond the total's remaining %d", tx3, tx4, pps)
	}
	c, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c[DropRateLimit].Packets == 0 || c.Dropped() != c[DropRateLimit] {
		t.Errorf("rate_limit counter %+v, Dropped %+v", c[DropRateLimit], c.Dropped())
	}
	if err := p.ResetBucket(0); err == nil {
		t.Error("ResetBucket(0) accepted the total's bucket")
	}
}

// TestRateUnlimited: with no caps, nothing is dropped.
func TestRateUnlimited(t *testing.T) {
	p := loadTest(t, Config{Ports: relayPorts})
	if err := p.PutBucket(cidB4, peerB4, relay4, 1); err != nil {
		t.Fatal(err)
	}
	for range 500 {
		if a, _, err := p.Run(v4(cidB4).bytes()); err != nil || a != ActionTX {
			t.Fatalf("action %d, %v; want TX", a, err)
		}
	}
}

//go:build linux

package quicpipe

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// TestNATRebindIdle: peer A's NAT (endpoint-independent) moves its mapping
// to a new port while the connection is direct and idle (only the direct
// path's keep-alive probes flow). Peer B must be on the direct path to A's
// new port within about one keep-alive (the relay keep-alive draws the
// relay's PATH_CHALLENGE, or the lost probe makes A ask the relay again),
// not at the next registration refresh (a third of the 60 s TTL).
func TestNATRebindIdle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l := newNATLab(t, natEIM, natEIM, false, natUplink)
	p := l.dial(t, ctx, nil)
	p.waitDirect(t, ctx)
	time.Sleep(2 * time.Second) // idle on the direct path

	oldPort := netAddrPort(p.d.Registration().Observed).Port()
	newPort := uint16(40000)
	if newPort == oldPort {
		newPort++
	}
	l.natA.Nft(fmt.Sprintf(`flush chain ip nat postrouting
add rule ip nat postrouting oifname "wan0" meta l4proto udp masquerade to :%d
`, newPort))
	l.natA.FlushConntrack()
	t0 := time.Now()
	newA := netip.AddrPortFrom(l.wanA, newPort)

	// Longer than the registration refresh (20 s): a wait that times out
	// measures the slow behaviour.
	wctx, wcancel := context.WithTimeout(ctx, 25*time.Second)
	defer wcancel()
	pi, err := p.aw.first(wctx, func(pi PathInfo) bool {
		return pi.Since.After(t0) && pi.Kind == PathDirect && pi.Remote == newA
	})
	if err != nil {
		t.Fatalf("the accepter never moved to A's new address %v: %v; dialer %+v, accepter %+v", newA, err, p.d.DirectStats(), p.a.DirectStats())
	}
	took := pi.Since.Sub(t0)
	t.Logf("NAT rebinding, idle: the accepter is direct to A's new address %v after %v", newA, took.Round(time.Millisecond))
	// One relay keep-alive (2 s) plus a probe's loss detection (1 s),
	// doubled for a loaded machine.
	if bound := 6 * time.Second; took > bound {
		t.Errorf("new direct path after %v, want at most %v", took, bound)
	}
	if err := transfer(ctx, p.dc, p.ac, 1<<20, nil); err != nil {
		t.Fatalf("transfer after the rebinding: %v", err)
	}
	if dp, _ := p.d.Path(p.dc); dp.Kind != PathDirect {
		t.Errorf("dialer on %v after the rebinding, want direct", dp)
	}
}

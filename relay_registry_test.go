package quicpipe

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/internal/forward"
)

// recordIndex is a regIndex that records the calls a registry makes.
type recordIndex struct{ calls []string }

func (x *recordIndex) add(format string, args ...any) {
	x.calls = append(x.calls, fmt.Sprintf(format, args...))
}

func (x *recordIndex) created(e *regEntry) { x.add("created %s", e.key) }
func (x *recordIndex) removed(e *regEntry) { x.add("removed %s", e.key) }
func (x *recordIndex) setTarget(e *regEntry, d *forward.Dest) {
	if d == nil {
		x.add("target %s none", e.key)
		return
	}
	x.add("target %s %v", e.key, d.AP)
}
func (x *recordIndex) addCIDs(e *regEntry, cids []CID)    { x.add("add %s %d", e.key, len(cids)) }
func (x *recordIndex) removeCIDs(e *regEntry, cids []CID) { x.add("remove %s %d", e.key, len(cids)) }
func (x *recordIndex) moved(e *regEntry, cids []CID)      { x.add("moved %s %d", e.key, len(cids)) }

// TestMemRegistry follows one registration through the registry's writes:
// what each tells the forwarding state, and the per-source usage.
func TestMemRegistry(t *testing.T) {
	x := &recordIndex{}
	var reg registry = newMemRegistry(x)
	key := newCIDKey()
	a := &forward.Dest{AP: netip.MustParseAddrPort("192.0.2.1:1000")}
	b := &forward.Dest{AP: netip.MustParseAddrPort("198.51.100.1:2000")}
	srcA, srcB := sourceOf(a.AP.Addr()), sourceOf(b.AP.Addr())
	exp := time.Now().Add(time.Minute)
	step := func(name string, want []string, do func()) {
		t.Helper()
		x.calls = nil
		do()
		if !slices.Equal(x.calls, want) {
			t.Errorf("%s: calls %q, want %q", name, x.calls, want)
		}
	}
	k := string(key)
	var e *regEntry
	step("create", []string{"created " + k, "target " + k + " 192.0.2.1:1000", "remove " + k + " 0", "add " + k + " 8"}, func() {
		e = reg.put(k, nil, srcA, a, netip.AddrPort{}, nil, 1, slideWindow(key, 0, nil, 1, 8), exp)
	})
	if reg.get(k) != e || reg.count() != 1 || reg.usage(srcA) != (sourceUsage{regs: 1, cids: 8}) {
		t.Fatalf("after create: get %p (want %p), count %d, usage %+v", reg.get(k), e, reg.count(), reg.usage(srcA))
	}
	// Slide the window from 1..8 to 5..14: 4 out, 6 in.
	step("slide", []string{"target " + k + " 192.0.2.1:1000", "remove " + k + " 4", "add " + k + " 6"}, func() {
		reg.put(k, e, srcA, a, netip.AddrPort{}, nil, 5, slideWindow(key, e.first, e.cids, 5, 10), exp)
	})
	if e.first != 5 || e.num != 10 || reg.usage(srcA) != (sourceUsage{regs: 1, cids: 10}) {
		t.Fatalf("after slide: window %d+%d, usage %+v", e.first, e.num, reg.usage(srcA))
	}
	// A refresh from a new address moves the kept CIDs.
	step("refresh elsewhere", []string{"target " + k + " 198.51.100.1:2000", "moved " + k + " 10", "remove " + k + " 0", "add " + k + " 0"}, func() {
		reg.put(k, e, srcB, b, netip.AddrPort{}, nil, 5, e.cids, exp)
	})
	if reg.usage(srcA) != (sourceUsage{}) || reg.usage(srcB) != (sourceUsage{regs: 1, cids: 10}) {
		t.Fatalf("after refresh elsewhere: usage %+v and %+v", reg.usage(srcA), reg.usage(srcB))
	}
	step("move", []string{"target " + k + " 192.0.2.1:1000", "moved " + k + " 10"}, func() {
		reg.move(e, srcA, a)
	})
	if e.Dest() != a || reg.usage(srcA) != (sourceUsage{regs: 1, cids: 10}) || reg.usage(srcB) != (sourceUsage{}) {
		t.Fatalf("after move: dest %v, usage %+v and %+v", e.Dest().AP, reg.usage(srcA), reg.usage(srcB))
	}
	n := 0
	reg.entries(func(*regEntry) bool { n++; return true })
	if n != 1 {
		t.Fatalf("entries: %d, want 1", n)
	}
	step("remove", []string{"remove " + k + " 10", "target " + k + " none", "removed " + k}, func() {
		reg.remove(e)
	})
	if reg.get(k) != nil || reg.count() != 0 || reg.usage(srcA) != (sourceUsage{}) {
		t.Fatalf("after remove: get %v, count %d, usage %+v", reg.get(k), reg.count(), reg.usage(srcA))
	}
}

// TestMemRegistryOwnEntries: ownEntries walks the registrations with a
// source (the relay's own), not the remote ones of a fleet, as a
// registration changes hands.
func TestMemRegistryOwnEntries(t *testing.T) {
	reg := newMemRegistry(&recordIndex{})
	d := &forward.Dest{AP: netip.MustParseAddrPort("192.0.2.1:1000")}
	src := sourceOf(d.AP.Addr())
	exp := time.Now().Add(time.Minute)
	own := func() []string {
		var keys []string
		reg.ownEntries(func(e *regEntry) bool { keys = append(keys, e.key); return true })
		slices.Sort(keys)
		return keys
	}
	k1, k2 := newCIDKey(), newCIDKey()
	e1 := reg.put(string(k1), nil, src, d, netip.AddrPort{}, nil, 1, slideWindow(k1, 0, nil, 1, 4), exp)
	e2 := reg.put(string(k2), nil, netip.Prefix{}, d, netip.AddrPort{}, nil, 1, slideWindow(k2, 0, nil, 1, 4), exp)
	if got := own(); !slices.Equal(got, []string{string(k1)}) {
		t.Fatalf("own entries %q, want only the local one", got)
	}
	// The remote one registers here; the local one is taken by a member.
	reg.put(string(k2), e2, src, d, netip.AddrPort{}, nil, 1, e2.cids, exp)
	reg.put(string(k1), e1, netip.Prefix{}, d, netip.AddrPort{}, nil, 1, e1.cids, exp)
	if got := own(); !slices.Equal(got, []string{string(k2)}) {
		t.Fatalf("own entries %q after the swap, want only %q", got, k2)
	}
	reg.remove(e2)
	if got := own(); len(got) != 0 || reg.count() != 1 {
		t.Fatalf("own entries %q, count %d after removing the local one", got, reg.count())
	}
}

package quicpipe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordingReplicator records what a Relay tells its Replicator.
type recordingReplicator struct {
	mu  sync.Mutex
	ops []string // "put <first> <num> <target>" or "remove"
}

func (r *recordingReplicator) Put(rec FleetRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, fmt.Sprintf("put %d %d %s", rec.First, rec.Num, rec.Target))
}

func (r *recordingReplicator) Remove([]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, "remove")
}

// targets returns the distinct targets of the puts recorded so far.
func (r *recordingReplicator) targets() map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]bool)
	for _, op := range r.ops {
		if f := strings.Fields(op); len(f) == 4 {
			m[f[3]] = true
		}
	}
	return m
}

func (r *recordingReplicator) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ops := r.ops
	r.ops = nil
	return ops
}

// TestRelayReplicator checks what the relay tells its Replicator: a
// creation, a window slide and a removal, never a refresh.
func TestRelayReplicator(t *testing.T) {
	rep := &recordingReplicator{}
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{Replicator: rep})
	c := newAPIClient(t, e)
	key := fixedKey(1)
	c.register(t, key, 1, 8)
	c.register(t, key, 1, 8) // refresh
	c.register(t, key, 3, 8) // slide
	if a := c.do(t, http.MethodDelete, registerPath, regBody(key, 0, 1)); a.status != http.StatusNoContent {
		t.Fatalf("DELETE: status %d", a.status)
	}
	want := []string{"put 1 8 " + c.addr(), "put 3 8 " + c.addr(), "remove"}
	if got := rep.take(); !slices.Equal(got, want) {
		t.Fatalf("replicator got %q, want %q", got, want)
	}
}

// TestRelayApplyRemote applies, replaces and removes remote records, and
// has a local registration take a remote one over.
func TestRelayApplyRemote(t *testing.T) {
	rep := &recordingReplicator{}
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{Replicator: rep, MaxRegistrations: 2})
	r := e.relay
	k1, k2, k3 := fixedKey(1), fixedKey(2), fixedKey(3)
	target := netip.MustParseAddrPort("127.0.0.1:40001")
	if err := r.ApplyRemote(FleetRecord{Key: k1, First: 1, Num: 4, Target: target, Member: "m1"}); err != nil {
		t.Fatal(err)
	}
	checkCIDWindow(t, r, k1, 1, 4, target.String())
	if s := r.Stats(); s.Registrations != 1 || s.RemoteRegistrations != 1 || s.CIDs != 4 {
		t.Fatalf("stats: %d registrations (%d remote), %d CIDs; want 1 (1), 4", s.Registrations, s.RemoteRegistrations, s.CIDs)
	}
	if u := relaySnapshot(r).perSource; len(u) != 0 {
		t.Fatalf("a remote registration counts under sources %v", u)
	}
	// A move and a slide replace it in place.
	moved := netip.MustParseAddrPort("127.0.0.1:40002")
	if err := r.ApplyRemote(FleetRecord{Key: k1, First: 3, Num: 4, Target: moved, Member: "m1"}); err != nil {
		t.Fatal(err)
	}
	checkCIDWindow(t, r, k1, 3, 4, moved.String())

	for _, bad := range []FleetRecord{
		{Key: []byte("short"), First: 1, Num: 1, Target: target, Member: "m1"},
		{Key: k2, First: 0, Num: 1, Target: target, Member: "m1"},
		{Key: k2, First: 1, Num: 0, Target: target, Member: "m1"},
		{Key: k2, First: ^uint32(0), Num: 2, Target: target, Member: "m1"},
		{Key: k2, First: 1, Num: 1, Target: target},
		{Key: k2, First: 1, Num: 1, Target: netip.AddrPort{}, Member: "m1"},
		{Key: k2, First: 1, Num: 1, Target: netAddrPort(r.udpAddr().AddrPort()), Member: "m1"},
	} {
		if err := r.ApplyRemote(bad); !errors.Is(err, ErrRemoteRecord) {
			t.Errorf("ApplyRemote(%+v) = %v, want ErrRemoteRecord", bad, err)
		}
	}
	if err := r.ApplyRemote(FleetRecord{Key: k2, First: 1, Num: 1, Target: target, Member: "m2"}); err != nil {
		t.Fatal(err)
	}
	if err := r.ApplyRemote(FleetRecord{Key: k3, First: 1, Num: 1, Target: target, Member: "m2"}); !errors.Is(err, ErrRemoteFull) {
		t.Fatalf("ApplyRemote over MaxRegistrations = %v, want ErrRemoteFull", err)
	}

	// RemoveRemote removes only what the named member holds.
	if r.RemoveRemote(k1, "m2") {
		t.Fatal("RemoveRemote removed another member's registration")
	}
	if !r.RemoveRemote(k1, "m1") {
		t.Fatal("RemoveRemote did not remove m1's registration")
	}
	if _, ok := r.FleetRecord(k1); ok {
		t.Fatal("k1 still registered")
	}

	// A local registration takes k2 over from m2, and is replicated.
	c := newAPIClient(t, e)
	c.register(t, k2, 1, 1)
	rec, ok := r.FleetRecord(k2)
	if !ok || rec.Member != "" || rec.Target.String() != c.addr() {
		t.Fatalf("after a local registration: %+v %v, want the relay's own", rec, ok)
	}
	if got, want := rep.take(), []string{"put 1 1 " + c.addr()}; !slices.Equal(got, want) {
		t.Fatalf("replicator got %q, want %q", got, want)
	}
	if n := r.RemoveMember("m2"); n != 0 {
		t.Fatalf("RemoveMember removed %d of the relay's own registrations", n)
	}
	// A remote record takes it back, without telling the Replicator.
	if err := r.ApplyRemote(FleetRecord{Key: k2, First: 1, Num: 1, Target: target, Member: "m2"}); err != nil {
		t.Fatal(err)
	}
	if u := relaySnapshot(r).perSource; len(u) != 0 {
		t.Fatalf("per-source usage after a takeover: %v, want none", u)
	}
	if n := r.RemoveMember("m2"); n != 1 {
		t.Fatalf("RemoveMember removed %d, want 1", n)
	}
	if s := r.Stats(); s.Registrations != 0 || s.RemoteRegistrations != 0 || s.CIDs != 0 {
		t.Fatalf("stats: %d registrations (%d remote), %d CIDs; want none", s.Registrations, s.RemoteRegistrations, s.CIDs)
	}
	if ops := rep.take(); len(ops) != 0 {
		t.Fatalf("remote changes reached the replicator: %q", ops)
	}
}

// BenchmarkJanitorWithFleetTable: one janitor walk of a relay holding 1,000
// registrations of its own and 100,000 of other fleet members (one CID
// each). The walk visits the relay's own only (remote ones never expire).
func BenchmarkJanitorWithFleetTable(b *testing.B) {
	e := newTestEnv(b, "127.0.0.1:0", &RelayConfig{MaxRegistrations: 200_000, MaxCIDs: 1 << 20})
	r := e.relay
	target := netip.MustParseAddrPort("127.0.0.1:40001")
	for i := range 100_000 {
		k := make([]byte, 16)
		binary.BigEndian.PutUint64(k, uint64(i)+1)
		if err := r.ApplyRemote(FleetRecord{Key: k, First: 1, Num: 1, Target: target, Member: "m1"}); err != nil {
			b.Fatal(err)
		}
	}
	d, err := r.newDest(target, netAddrPort(r.udpAddr().AddrPort()))
	if err != nil {
		b.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	r.regMu.Lock()
	for i := range 1000 {
		k := make([]byte, 16)
		binary.BigEndian.PutUint64(k[8:], uint64(i)+1)
		r.regs.put(string(k), nil, sourceOf(target.Addr()), d, netip.AddrPort{}, nil, 1, slideWindow(k, 0, nil, 1, 1), exp)
	}
	r.regMu.Unlock()
	now := time.Now()
	b.ResetTimer()
	for b.Loop() {
		r.expire(now)
	}
}

// TestMeasureFleetTable measures what a fleet member's relay holds per
// remote registration of 64 CIDs (the default window) at a large count:
// QUICPIPE_MEASURE_FLEET_TABLE=1000000 go test -run TestMeasureFleetTable -v -timeout 30m .
// (about 6 GB at 1M). It reports heap and RSS growth per registration; the
// fleet member's own record of each key and its NATS node come on top
// (bench/, comparison 5).
func TestMeasureFleetTable(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("QUICPIPE_MEASURE_FLEET_TABLE"))
	if n <= 0 {
		t.Skip("set QUICPIPE_MEASURE_FLEET_TABLE=N to measure N remote registrations")
	}
	const window = 64
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{MaxRegistrations: n + 1, MaxCIDs: window*n + 1})
	r := e.relay
	target := netip.MustParseAddrPort("127.0.0.1:40001")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rss0 := rssMB()
	start := time.Now()
	k := make([]byte, 16)
	for i := range n {
		binary.BigEndian.PutUint64(k, uint64(i)+1)
		if err := r.ApplyRemote(FleetRecord{Key: k, First: 1, Num: window, Target: target, Member: "m1"}); err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	rss1 := rssMB()
	heap := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
	t.Logf("%d remote registrations of %d CIDs applied in %v (%.0f/s): heap %.0f B per registration (%.1f B per CID), RSS %d -> %d MB (%.0f B per registration)",
		n, window, took.Round(time.Millisecond), float64(n)/took.Seconds(), heap, heap/window, rss0, rss1, float64(rss1-rss0)*(1<<20)/float64(n))
	if s := r.Stats(); s.RemoteRegistrations != n || s.CIDs != window*n {
		t.Fatalf("stats: %d remote registrations, %d CIDs; want %d, %d", s.RemoteRegistrations, s.CIDs, n, window*n)
	}
}

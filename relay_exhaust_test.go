package quicpipe

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// try sends one API request and returns its status and error code (empty on
// success), or an error if no answer came.
func (c *apiClient) try(ctx context.Context, method, path string, body []byte) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, method, "https://quicpipe"+path, bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", err
	}
	if resp.StatusCode/100 == 2 {
		return resp.StatusCode, "", nil
	}
	var e errorResponse
	json.Unmarshal(data, &e)
	return resp.StatusCode, e.Code, nil
}

// loopbackSource returns the i-th test source address on IPv4 loopback,
// from 127.0.1.1 on (127.0.0.1 is left to the relay and honest clients).
func loopbackSource(i int) string {
	return fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250)
}

// fillFromSource registers fresh keys from one client, each with the largest
// window the relay allows, until the relay refuses one. It returns the CIDs
// it got registered and the code of the refusal.
func fillFromSource(t testing.TB, c *apiClient, r *Relay, src int) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	num := r.cfg.MaxCIDsPerRegistration
	held := 0
	for k := 0; k < 1000; k++ {
		key := []byte(fmt.Sprintf("fill-%06d-%06d-padding", src, k))
		status, code, err := c.try(ctx, http.MethodPost, registerPath, regBody(key, 0, int64(num)))
		if err != nil {
			t.Fatalf("source %d, registration %d: %v", src, k, err)
		}
		if status != http.StatusOK {
			return held, code
		}
		held += num
	}
	t.Fatalf("source %d: 1000 registrations accepted", src)
	return 0, ""
}

// TestMeasureRelayFill measures how many attacking sources fill the CID
// table of a relay with the default limits: each source registers windows
// as large as allowed until refused, source after source, until the relay
// refuses with limit_cids. It is a measurement, not a check, and takes
// tens of seconds and hundreds of MB: run it with
//
//	QUICPIPE_MEASURE_FILL=1 go test -run TestMeasureRelayFill -v .
func TestMeasureRelayFill(t *testing.T) {
	if os.Getenv("QUICPIPE_MEASURE_FILL") == "" {
		t.Skip("set QUICPIPE_MEASURE_FILL=1 to run this measurement")
	}
	e := newTestEnv(t, "127.0.0.1:0", nil)
	r := e.relay
	start := time.Now()
	rss0 := rssMB()
	perSource, filling := 0, 0
	for src := 0; src < 2000; src++ {
		c := newAPIClientFrom(t, e, loopbackSource(src))
		held, code := fillFromSource(t, c, r, src)
		if src == 0 {
			perSource = held
			t.Logf("one source holds %d CIDs (refused with %s)", held, code)
		}
		c.rt.Close()
		if held > 0 {
			filling++
		}
		if code == "limit_cids" {
			t.Logf("table full (%d CIDs) with %d sources in %v; RSS %d -> %d MB",
				r.Stats().CIDs, filling, time.Since(start).Round(time.Millisecond), rss0, rssMB())
			honest := newAPIClient(t, e)
			status, code, err := honest.try(context.Background(), http.MethodPost, registerPath, regBody(fixedKey(0xee), 0, 64))
			t.Logf("a new listener from another source then gets: %d %s %v", status, code, err)
			return
		}
	}
	t.Logf("2000 sources did not fill the table: %d CIDs, %d per source", r.Stats().CIDs, perSource)
}

// rssMB returns the resident set size of this process in MB, or -1.
func rssMB() int {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return kb / 1024
		}
	}
	return -1
}

// BenchmarkRegisterUnderWindowAttack measures an honest registration's
// latency (register a 64-CID window, then delete it) while three attacking
// sources slide the largest window the relay allows back and forth between
// two positions, against the same registration on an idle relay. It
// reports both and their ratio. Run it with a fixed count, for example
//
//	go test -run '^$' -bench RegisterUnderWindowAttack -benchtime 20x .
func BenchmarkRegisterUnderWindowAttack(b *testing.B) {
	e := newTestEnv(b, "127.0.0.1:0", nil)
	r := e.relay
	honest := newAPIClientFrom(b, e, "127.0.0.2")
	ctx := context.Background()
	key := fixedKey(0x42)
	once := func() time.Duration {
		t0 := time.Now()
		if status, code, err := honest.try(ctx, http.MethodPost, registerPath, regBody(key, 0, 64)); err != nil || status != http.StatusOK {
			b.Fatalf("honest registration: %d %s %v", status, code, err)
		}
		if status, _, err := honest.try(ctx, http.MethodDelete, registerPath, regBody(key, 0, 0)); err != nil || status != http.StatusNoContent {
			b.Fatalf("honest delete: %d %v", status, err)
		}
		return time.Since(t0)
	}
	once() // handshake
	const idleRuns = 20
	var idle time.Duration
	for range idleRuns {
		idle += once()
	}
	idle /= idleRuns

	actx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var attacks, refused atomic.Int64
	num := int64(r.cfg.MaxCIDsPerRegistration)
	for i := range 3 {
		c := newAPIClientFrom(b, e, loopbackSource(i))
		akey := fixedKey(byte(0x90 + i))
		wg.Go(func() {
			for j := 0; actx.Err() == nil; j++ {
				first := 1 + int64(j%2)*num
				status, _, err := c.try(actx, http.MethodPost, registerPath, regBody(akey, first, num))
				if err != nil {
					continue
				}
				attacks.Add(1)
				if status != http.StatusOK {
					refused.Add(1)
				}
			}
		})
	}
	time.Sleep(500 * time.Millisecond) // let the attack start
	b.ResetTimer()
	var total time.Duration
	for range b.N {
		total += once()
	}
	b.StopTimer()
	stop()
	wg.Wait()
	attack := total / time.Duration(b.N)
	b.ReportMetric(float64(idle.Microseconds())/1000, "idle-ms/reg")
	b.ReportMetric(float64(attack.Microseconds())/1000, "attack-ms/reg")
	b.ReportMetric(float64(attack)/float64(idle), "ratio")
	b.ReportMetric(float64(attacks.Load()), "attack-reqs")
	b.ReportMetric(float64(refused.Load()), "attack-refused")
	runtime.GC()
}

// TestRelaySourceCIDLimit: with the default limits, eight sources that each
// register as many CIDs as the relay lets them hold a small part of the
// table, and a new listener from another source still registers.
func TestRelaySourceCIDLimit(t *testing.T) {
	e := newTestEnv(t, "127.0.0.1:0", nil)
	r := e.relay
	if n := r.cfg.MaxCIDs / r.cfg.MaxCIDsPerSource; n < 500 {
		t.Errorf("defaults: %d sources fill the table, want at least 500", n)
	}
	const attackers = 8
	for src := range attackers {
		c := newAPIClientFrom(t, e, loopbackSource(src))
		held, code := fillFromSource(t, c, r, src)
		if held > r.cfg.MaxCIDsPerSource || code != "limit_source_cids" {
			t.Fatalf("source %d: holds %d CIDs, refused with %q; want at most %d, limit_source_cids",
				src, held, code, r.cfg.MaxCIDsPerSource)
		}
	}
	st := r.Stats()
	if max := attackers * r.cfg.MaxCIDsPerSource; st.CIDs > max {
		t.Errorf("CIDs: got %d, want at most %d", st.CIDs, max)
	}
	if got := st.Rejected["limit_source_cids"]; got != attackers {
		t.Errorf("Rejected[limit_source_cids]: got %d, want %d", got, attackers)
	}
	if st.Rejected["limit_cids"] != 0 {
		t.Errorf("Rejected[limit_cids]: got %d, want 0", st.Rejected["limit_cids"])
	}
	honest := newAPIClient(t, e)
	honest.register(t, fixedKey(0xee), 0, 64)
	checkCIDWindow(t, r, fixedKey(0xee), 1, 64, honest.addr())
	// Usage is given back when registrations go.
	c := newAPIClientFrom(t, e, loopbackSource(0))
	for k := range 2 {
		key := []byte(fmt.Sprintf("fill-%06d-%06d-padding", 0, k))
		if a := c.do(t, http.MethodDelete, registerPath, regBody(key, 0, 0)); a.status != http.StatusNoContent {
			t.Fatalf("DELETE: got status %d, want 204", a.status)
		}
	}
	if u, ok := relaySnapshot(r).perSource[netip.MustParsePrefix(loopbackSource(0)+"/32")]; ok {
		t.Errorf("usage of a source after deleting all its registrations: got %+v, want none", u)
	}
}

// TestRelaySourceCIDLimitRefresh: at its CID limit, a source may still
// refresh, slide and shrink its windows, and use exactly the room it freed.
func TestRelaySourceCIDLimitRefresh(t *testing.T) {
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{MaxCIDsPerSource: 300, MaxCIDsPerRegistration: 200, DerivationBurst: 1e6})
	r := e.relay
	c := newAPIClient(t, e)
	a, b := fixedKey(1), fixedKey(2)
	c.register(t, a, 0, 200)
	c.register(t, b, 0, 100)
	checkAPIError(t, c.do(t, http.MethodPost, registerPath, regBody(fixedKey(3), 0, 1)), http.StatusTooManyRequests, "limit_source_cids")
	state := relaySnapshot(r)
	checkAPIError(t, c.do(t, http.MethodPost, registerPath, regBody(b, 0, 101)), http.StatusTooManyRequests, "limit_source_cids")
	checkUnchanged(t, state, relaySnapshot(r))
	c.register(t, a, 50, 200) // slides
	c.register(t, a, 50, 150) // shrinks
	checkAPIError(t, c.do(t, http.MethodPost, registerPath, regBody(fixedKey(3), 0, 51)), http.StatusTooManyRequests, "limit_source_cids")
	c.register(t, fixedKey(3), 0, 50)
	checkCIDWindow(t, r, a, 50, 150, c.addr())
	if u := relaySnapshot(r).perSource[netip.MustParsePrefix("127.0.0.1/32")]; u != (sourceUsage{regs: 3, cids: 300}) {
		t.Errorf("usage: got %+v, want 3 registrations, 300 CIDs", u)
	}
	// Another source has its own quota.
	c2 := newAPIClientFrom(t, e, "127.0.0.2")
	c2.register(t, fixedKey(4), 0, 200)
	// A registration that moves to another source takes its CIDs along.
	c2.register(t, b, 0, 100)
	if u := relaySnapshot(r).perSource[netip.MustParsePrefix("127.0.0.1/32")]; u != (sourceUsage{regs: 2, cids: 200}) {
		t.Errorf("usage of the first source after a move: got %+v, want 2 registrations, 200 CIDs", u)
	}
	checkAPIError(t, c2.do(t, http.MethodPost, registerPath, regBody(fixedKey(5), 0, 1)), http.StatusTooManyRequests, "limit_source_cids")
}

// TestRegisterDerivationBudget: a source that slides a large window back
// and forth is refused once it has spent its budget of derived CIDs, with
// limit_derive and Retry-After, while another source still registers.
func TestRegisterDerivationBudget(t *testing.T) {
	// A refill of 1 CID per second: the budget is the burst.
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{DerivationsPerSecond: 1})
	r := e.relay
	num := int64(r.cfg.MaxCIDsPerRegistration)
	if r.cfg.DerivationBurst != r.cfg.MaxCIDsPerSource {
		t.Errorf("default DerivationBurst: got %d, want MaxCIDsPerSource (%d)", r.cfg.DerivationBurst, r.cfg.MaxCIDsPerSource)
	}
	attacker := newAPIClientFrom(t, e, loopbackSource(0))
	key := fixedKey(0xa0)
	const tries = 10
	ok := 0
	cur := int64(0) // the window's first index, 0 before the first
	for range tries {
		next := 1 + num // the window disjoint from the current one
		if cur == next {
			next = 1
		}
		a := attacker.do(t, http.MethodPost, registerPath, regBody(key, next, num))
		if a.status == http.StatusOK {
			ok++
			cur = next
			continue
		}
		checkAPIError(t, a, http.StatusTooManyRequests, "limit_derive")
		if s, err := strconv.Atoi(a.header.Get("Retry-After")); err != nil || s < 1 {
			t.Errorf("Retry-After: got %q, want a number of seconds", a.header.Get("Retry-After"))
		}
	}
	// The burst (8192) pays for two windows of 4096, then nothing.
	if want := r.cfg.DerivationBurst / int(num); ok != want {
		t.Errorf("window moves accepted: got %d of %d, want %d", ok, tries, want)
	}
	if got := r.Stats().Rejected["limit_derive"]; got != uint64(tries-ok) {
		t.Errorf("Rejected[limit_derive]: got %d, want %d", got, tries-ok)
	}
	// Refreshing the window in place derives nothing and stays allowed.
	attacker.register(t, key, cur, num)
	honest := newAPIClientFrom(t, e, "127.0.0.2")
	honest.register(t, fixedKey(0xa1), 0, 64)
	checkCIDWindow(t, r, fixedKey(0xa1), 1, 64, honest.addr())
}

// TestRegisterDerivesOutsideLock: while one registration's CIDs are being
// derived, other registrations go on; a request for the same key that
// changes the registration meanwhile makes the first one start over, and
// the table ends consistent.
func TestRegisterDerivesOutsideLock(t *testing.T) {
	e := newTestEnv(t, "127.0.0.1:0", nil)
	r := e.relay
	entered, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	hook := func() {
		if calls.Add(1) == 1 {
			close(entered)
			<-release
		}
	}
	r.testHookDerived.Store(&hook)
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce) // before the relay's cleanup, which may need the request done
	slow := newAPIClientFrom(t, e, "127.0.0.2")
	key := fixedKey(0xb0)
	done := make(chan apiAnswer, 1)
	go func() {
		// Not c.do: that calls t.Fatal, which must not run off the test's
		// goroutine.
		status, code, err := slow.try(context.Background(), http.MethodPost, registerPath, regBody(key, 1, 1000))
		done <- apiAnswer{status: status, body: []byte(code + fmt.Sprint(err))}
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the registration never reached the derivation hook")
	}
	// regMu is free while the first request derives: another source
	// registers, and the same key is registered with another window.
	other := newAPIClientFrom(t, e, "127.0.0.3")
	other.register(t, fixedKey(0xb1), 0, 64)
	slow.register(t, key, 5000, 10)
	releaseOnce()
	a := <-done
	if a.status != http.StatusOK {
		t.Fatalf("the held registration: got %d %s, want 200", a.status, a.body)
	}
	if n := calls.Load(); n < 4 {
		t.Errorf("derivations: got %d, want at least 4 (the held request derived again after its key changed)", n)
	}
	checkCIDWindow(t, r, key, 1, 1000, slow.addr())
	checkCIDWindow(t, r, fixedKey(0xb1), 1, 64, other.addr())
	if st := r.Stats(); st.CIDs != 1064 {
		t.Errorf("CIDs: got %d, want 1064", st.CIDs)
	}
	if u := relaySnapshot(r).perSource[netip.MustParsePrefix("127.0.0.2/32")]; u != (sourceUsage{regs: 1, cids: 1000}) {
		t.Errorf("usage: got %+v, want 1 registration, 1000 CIDs", u)
	}
}

// TestRelaySessionSourceFull: a peer whose window would grow past its
// source's CID limit keeps the window it had (its live connections stay
// registered) and is told why, as when the window passes the relay's
// per-registration limit.
func TestRelaySessionSourceFull(t *testing.T) {
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{MaxCIDsPerSource: 100})
	cfg, err := populateConfig(e.config(e.aID), false)
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp, ConnectionIDLength: CIDLen}
	defer func() {
		tr.Close()
		udp.Close()
	}()
	tlsConf, err := ClientTLSConfig(nil, pub(e.relayID), http3.NextProtoH3)
	if err != nil {
		t.Fatal(err)
	}
	key := newCIDKey()
	gen, err := newCIDGenerator(key)
	if err != nil {
		t.Fatal(err)
	}
	s := newRelaySession(tr, e.relay.udpAddr(), tlsConf, key, gen, cfg)
	defer s.close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.register(ctx); err != nil {
		t.Fatal(err)
	}
	// A live connection pins the window's start while 50 more CIDs are
	// issued: the next window (1..114) is more than the source may hold.
	unpin := gen.pin()
	defer unpin()
	for range 50 {
		gen.GenerateConnectionID()
	}
	err = s.register(ctx)
	var full *windowFullError
	if !errors.As(err, &full) || !isRelayError(err, http.StatusTooManyRequests, "limit_source_cids") ||
		!strings.Contains(err.Error(), "MaxCIDsPerSource") {
		t.Fatalf("register beyond the source's limit: %v, want a windowFullError wrapping limit_source_cids that names MaxCIDsPerSource", err)
	}
	if reg := s.registration(); reg.First != 1 || reg.Num != 64 {
		t.Errorf("registration: got %+v, want the previous window 1..64 refreshed", reg)
	}
	checkCIDWindow(t, e.relay, key, 1, 64, udp.LocalAddr().String())
}

// TestRelayConfigSourceLimits checks the defaults of the per-source limits
// and their validation.
func TestRelayConfigSourceLimits(t *testing.T) {
	id := GenerateIdentity()
	c, err := populateRelayConfig(&RelayConfig{Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxCIDsPerRegistration != 4096 || c.MaxCIDsPerSource != 8192 || c.DerivationsPerSecond != 512 || c.DerivationBurst != 8192 {
		t.Errorf("defaults: MaxCIDsPerRegistration %d, MaxCIDsPerSource %d, DerivationsPerSecond %d, DerivationBurst %d; want 4096, 8192, 512, 8192",
			c.MaxCIDsPerRegistration, c.MaxCIDsPerSource, c.DerivationsPerSecond, c.DerivationBurst)
	}
	if c, _ := populateRelayConfig(&RelayConfig{Identity: id, MaxCIDsPerSource: 100}); c.DerivationBurst != 4096 {
		t.Errorf("DerivationBurst with a small MaxCIDsPerSource: got %d, want MaxCIDsPerRegistration (4096)", c.DerivationBurst)
	}
	for _, bad := range []RelayConfig{
		{Identity: id, MaxCIDsPerSource: -1},
		{Identity: id, DerivationsPerSecond: -1},
		{Identity: id, DerivationBurst: 4095},
	} {
		if _, err := populateRelayConfig(&bad); err == nil {
			t.Errorf("%+v: accepted, want an error", bad)
		}
	}
}

// TestSlideWindow checks the CIDs of moved windows against derivation from
// scratch.
func TestSlideWindow(t *testing.T) {
	key := fixedKey(7)
	for _, tc := range []struct{ oldFirst, oldNum, first, num uint32 }{
		{0, 0, 1, 10},   // new
		{1, 10, 1, 10},  // same
		{1, 10, 5, 10},  // right, overlapping
		{5, 10, 1, 10},  // left, overlapping
		{1, 10, 11, 10}, // adjacent
		{1, 10, 100, 3}, // disjoint
		{5, 3, 1, 20},   // grows both ways
		{1, 20, 5, 3},   // shrinks inside
		{1<<32 - 10, 10, 1<<32 - 3, 3},
	} {
		var old []CID
		if tc.oldNum > 0 {
			old, _ = deriveRange(nil, key, tc.oldFirst, int(tc.oldNum))
		}
		got := slideWindow(key, tc.oldFirst, old, tc.first, tc.num)
		want, _ := deriveRange(nil, key, tc.first, int(tc.num))
		if !slices.Equal(got, want) {
			t.Errorf("%+v: got a window different from deriving it afresh", tc)
		}
	}
	if got := overlap(1, 10, 5, 10); got != 6 {
		t.Errorf("overlap(1, 10, 5, 10) = %d, want 6", got)
	}
	if got := overlap(1, 10, 11, 10); got != 0 {
		t.Errorf("overlap(1, 10, 11, 10) = %d, want 0", got)
	}
}

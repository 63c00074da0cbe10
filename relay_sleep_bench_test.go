package quicpipe

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkSleepWalk measures the janitor's walk over the sleepers (none of
// them due) and the longest a reader waits for the sleep lock meanwhile, as
// it does to handle a sleep datagram: with the lock let go every
// sleepWalkChunk sleepers ("chunked", the relay's), and held for the whole
// walk ("whole", as before). Metrics: max-wait-µs, the longest wait seen
// by a goroutine taking the lock every 50 µs during the walks (a
// millisecond apart, untimed).
//
//	go test -run XXX -bench SleepWalk -benchtime 20x .
func BenchmarkSleepWalk(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		for _, mode := range []string{"whole", "chunked"} {
			b.Run(fmt.Sprintf("sleepers=%d/%s", n, mode), func(b *testing.B) {
				r, err := ListenRelay("127.0.0.1:0", &RelayConfig{Identity: GenerateIdentity(), Mailbox: &MailboxConfig{}})
				if err != nil {
					b.Fatal(err)
				}
				defer r.Close()
				ss := r.sleep
				if mode == "whole" {
					ss.walkChunk = n + 1
				}
				far := time.Now().Add(time.Hour).UnixNano()
				r.regMu.Lock()
				ss.mu.Lock()
				for i := range n {
					s := fakeSleeper(r, i, far)
					ss.byID[s.id] = s
				}
				ss.mu.Unlock()
				r.regMu.Unlock()

				var stop atomic.Bool
				var maxWait atomic.Int64
				done := make(chan struct{})
				go func() {
					defer close(done)
					for !stop.Load() {
						t0 := time.Now()
						ss.mu.Lock()
						ss.mu.Unlock()
						if w := int64(time.Since(t0)); w > maxWait.Load() {
							maxWait.Store(w)
						}
						time.Sleep(50 * time.Microsecond)
					}
				}()
				b.ResetTimer()
				for range b.N {
					r.regMu.Lock()
					ss.lastWalk = time.Time{}
					if gone := ss.expireLocked(time.Now()); len(gone) != 0 {
						b.Fatalf("%d sleepers forgotten", len(gone))
					}
					r.regMu.Unlock()
					// Walks are a second apart in a relay: let the
					// waiter in between, untimed.
					b.StopTimer()
					time.Sleep(time.Millisecond)
					b.StartTimer()
				}
				b.StopTimer()
				stop.Store(true)
				<-done
				if got := ss.expired.Load(); got != 0 || len(ss.byID) != n {
					b.Fatalf("the walk forgot sleepers: expired %d, %d left of %d", got, len(ss.byID), n)
				}
				b.ReportMetric(float64(maxWait.Load())/1e3, "max-wait-µs")
			})
		}
	}
}

// TestSleepWalkChunked: a walk over more sleepers than sleepWalkChunk,
// letting go of the sleep lock between chunks, forgets exactly the due
// ones, with their mailboxes and registrations, and keeps the others.
func TestSleepWalkChunked(t *testing.T) {
	r, err := ListenRelay("127.0.0.1:0", &RelayConfig{Identity: GenerateIdentity(), Mailbox: &MailboxConfig{}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ss, m := r.sleep, r.mailbox
	const n = 3*sleepWalkChunk + 17
	now := time.Now()
	local := netip.MustParseAddrPort("127.0.0.1:9")
	d, err := r.newDest(netip.MustParseAddrPort("127.0.0.1:7"), r.udpAddr().AddrPort())
	if err != nil {
		t.Fatal(err)
	}
	r.regMu.Lock()
	m.mu.Lock()
	ss.mu.Lock()
	for i := range n {
		key := make([]byte, 32)
		binary.BigEndian.PutUint64(key, uint64(i)+1)
		reg := r.regs.put(string(key), nil, sourceOf(local.Addr()), d, r.udpAddr().AddrPort(), nil, 1, nil, now.Add(time.Hour))
		mkey := string(append([]byte("mailbox-"), key...))
		mb := &mailbox{key: mkey, src: sourceOf(local.Addr()), gone: make(chan struct{})}
		m.boxes[mkey] = mb
		m.perSource[mb.src]++
		s := &sleeper{reg: reg, mailbox: mkey, mb: mb, expires: now.Add(time.Hour).UnixNano()}
		if i%3 == 0 {
			s.expires = now.Add(-time.Second).UnixNano()
		}
		binary.BigEndian.PutUint64(s.id[:], uint64(i)+1)
		mb.sleep = s
		ss.byID[s.id] = s
	}
	ss.mu.Unlock()
	m.mu.Unlock()
	ss.lastWalk = time.Time{}
	ss.expireLocked(now)
	r.regMu.Unlock()
	due := (n + 2) / 3
	if got := ss.expired.Load(); got != uint64(due) {
		t.Fatalf("the walk forgot %d sleepers, want %d", got, due)
	}
	if got := r.SleepStats().Sleeping; got != n-due {
		t.Fatalf("%d sleepers left, want %d", got, n-due)
	}
	if got := r.MailboxStats().Open; got != n-due {
		t.Fatalf("%d mailboxes left, want %d", got, n-due)
	}
	if got := r.localRegistrations(); got != n-due {
		t.Fatalf("%d registrations left, want %d", got, n-due)
	}
	for _, s := range ss.byID {
		if s.expires < now.UnixNano() {
			t.Fatal("a due sleeper was kept")
		}
	}
}

// TestSleepWalkConcurrent: while the walk lets go of the sleep lock between
// chunks, another goroutine adds and removes sleepers (as sleep requests
// and drops do): the walk goes on over the changing map (the race detector
// watches), and forgets none of the live sleepers.
func TestSleepWalkConcurrent(t *testing.T) {
	r, err := ListenRelay("127.0.0.1:0", &RelayConfig{Identity: GenerateIdentity(), Mailbox: &MailboxConfig{}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ss := r.sleep
	ss.walkChunk = 64 // many chunks, many chances to interleave
	far := time.Now().Add(time.Hour).UnixNano()
	r.regMu.Lock()
	for i := range 5000 {
		s := fakeSleeper(r, i, far)
		ss.byID[s.id] = s
	}
	extra := make([]*sleeper, 20000)
	for i := range extra {
		extra[i] = fakeSleeper(r, 100000+i, far)
	}
	r.regMu.Unlock()
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		i := 0
		for !stop.Load() {
			s := extra[i%len(extra)]
			ss.mu.Lock()
			if ss.byID[s.id] == s {
				delete(ss.byID, s.id)
			} else {
				ss.byID[s.id] = s
			}
			ss.mu.Unlock()
			i++
		}
	}()
	for range 50 {
		r.regMu.Lock()
		ss.lastWalk = time.Time{}
		if gone := ss.expireLocked(time.Now()); len(gone) != 0 {
			t.Fatalf("the walk forgot %d live sleepers", len(gone))
		}
		r.regMu.Unlock()
	}
	stop.Store(true)
	<-done
	if n := ss.expired.Load(); n != 0 {
		t.Fatalf("the walk expired %d live sleepers", n)
	}
}

// fakeSleeper returns the i-th of a test's sleepers, with a bare
// registration in r's table (no CIDs, no mailbox), expiring at expires.
// r.regMu must be held.
func fakeSleeper(r *Relay, i int, expires int64) *sleeper {
	key := make([]byte, 32)
	binary.BigEndian.PutUint64(key, uint64(i)+1)
	reg := newRegEntry(string(key))
	r.regs.(*memRegistry).regs[reg.key] = reg
	s := &sleeper{reg: reg, expires: expires}
	binary.BigEndian.PutUint64(s.id[:], uint64(i)+1)
	return s
}

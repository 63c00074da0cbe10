//go:build linux

package quicpipe

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The idle-peer measurement (issue 18, item 3): what an idle listener, an
// Accepter registered with its mailbox open, costs the relay. The relay runs
// in the test process and the listeners in a child process (this test binary
// again), so that the relay's memory is the relay's alone.
//
//	QUICPIPE_MEASURE_IDLE=1 go test -run TestMeasureIdlePeers -v -timeout 30m .
//
// QUICPIPE_MEASURE_IDLE_N lists the cumulative counts to measure at
// (default "1000,10000"); QUICPIPE_MEASURE_IDLE_PROFILE, if set, is where
// the relay's heap profile is written after the last count. With
// QUICPIPE_MEASURE_IDLE_SLEEP=1 the listeners sleep (decision 0029):
//
//	QUICPIPE_MEASURE_IDLE=1 QUICPIPE_MEASURE_IDLE_SLEEP=1 QUICPIPE_MEASURE_IDLE_N=10000,100000 \
//		go test -run '^TestMeasureIdlePeers$' -v -timeout 60m .
const (
	measureIdleEnv      = "QUICPIPE_MEASURE_IDLE"
	measureIdleCountEnv = "QUICPIPE_MEASURE_IDLE_N"
	measureIdleChildEnv = "QUICPIPE_MEASURE_IDLE_CHILD" // relay address and key, for the child
	measureIdleProfEnv  = "QUICPIPE_MEASURE_IDLE_PROFILE"
	// measureIdleSleepEnv, if "1", measures sleeping listeners instead
	// (decision 0029, part 2): they sleep one second after opening their
	// mailbox, and the relay is measured once all of them sleep. If
	// "light", the sleepers are light ones (relay_idle_light_linux_test.go),
	// the same to the relay, cheaper to the children.
	measureIdleSleepEnv = "QUICPIPE_MEASURE_IDLE_SLEEP"
	// measureIdleMaxRSSEnv bounds the listeners' process, in MB (default
	// 3500) per child: it stops opening listeners beyond.
	measureIdleMaxRSSEnv  = "QUICPIPE_MEASURE_IDLE_MAXRSS_MB"
	measureIdleChildIPEnv = "QUICPIPE_MEASURE_IDLE_CHILD_IP"
	// measureIdleKeepAliveEnv sets the relay's SleepKeepAlive (a
	// duration; default 25s).
	measureIdleKeepAliveEnv = "QUICPIPE_MEASURE_IDLE_KEEPALIVE"
	// perChildMax is the most listeners one child process opens.
	perChildMax = 18000
)

func TestMeasureIdlePeers(t *testing.T) {
	if os.Getenv(measureIdleEnv) != "1" {
		t.Skip("set " + measureIdleEnv + "=1 to measure the relay's memory per idle listener")
	}
	counts := []int{1000, 10000}
	if s := os.Getenv(measureIdleCountEnv); s != "" {
		counts = counts[:0]
		for f := range strings.SplitSeq(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				t.Fatalf("%s: bad count %q", measureIdleCountEnv, f)
			}
			counts = append(counts, n)
		}
	}
	_, relayKey, _ := ed25519.GenerateKey(nil)
	rcfg := idleMeasureRelayConfig(relayKey)
	if v := os.Getenv(measureIdleKeepAliveEnv); v != "" {
		var err error
		if rcfg.SleepKeepAlive, err = time.ParseDuration(v); err != nil {
			t.Fatalf("%s: %v", measureIdleKeepAliveEnv, err)
		}
	}
	r, err := ListenRelay("127.0.0.1:0", rcfg)
	if err != nil {
		t.Fatal(err)
	}
	serveRelay(t, r, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Minute)
	defer cancel()
	// A process may hold fewer than 20,000 sockets here (RLIMIT_NOFILE's
	// hard limit): the listeners are shared among as many children as
	// needed, each opening its share of every count.
	children := (slices.Max(counts) + perChildMax - 1) / perChildMax
	type child struct {
		stdin io.WriteCloser
		lines *bufio.Scanner
	}
	var kids []child
	for k := range children {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestMeasureIdlePeersChild$", "-test.v")
		cmd.Env = append(os.Environ(), measureIdleChildEnv+"="+r.LocalAddr().String()+","+hex.EncodeToString(relayKey.Public().(ed25519.PublicKey)),
			// Each child's sockets on a loopback address of their own:
			// one address has fewer than 30,000 ephemeral ports.
			fmt.Sprintf("%s=127.0.1.%d", measureIdleChildIPEnv, k+1))
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			stdin.Close()
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(2 * time.Minute):
				cmd.Process.Kill()
				<-done
			}
		}()
		kids = append(kids, child{stdin, bufio.NewScanner(stdout)})
	}
	sleeping := os.Getenv(measureIdleSleepEnv) == "1" || os.Getenv(measureIdleSleepEnv) == "light"
	base := idleMemSnapshot(t)
	t.Logf("base: heap %d, RSS %d", base.heap, base.rss)
	for _, n := range counts {
		start := time.Now()
		// Child k holds listeners [n*k/children, n*(k+1)/children).
		for k, c := range kids {
			fmt.Fprintf(c.stdin, "%d\n", n*(k+1)/children-n*k/children)
		}
		var childRSS int64
		for k, c := range kids {
			var reply string
			for c.lines.Scan() {
				if reply = c.lines.Text(); strings.HasPrefix(reply, "idle ") || strings.HasPrefix(reply, "failed ") {
					break
				}
			}
			if !strings.HasPrefix(reply, "idle ") {
				t.Fatalf("child %d: %v (last line %q)", k, c.lines.Err(), reply)
			}
			var got int
			var rss int64
			if _, err := fmt.Sscanf(reply, "idle %d %d", &got, &rss); err != nil || got != n*(k+1)/children-n*k/children {
				t.Fatalf("child %d: %s", k, reply)
			}
			childRSS += rss
		}
		took := time.Since(start)
		if sleeping {
			// Wait until every listener sleeps and its connection is gone.
			deadline := time.Now().Add(10 * time.Minute)
			for {
				conns, _ := r.conns.counts()
				if r.SleepStats().Sleeping >= n && conns == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after 10 minutes: %d connections, want 0; sleepers: %+v, want %d", conns, r.SleepStats(), n)
				}
				if time.Now().Unix()%30 == 0 {
					t.Logf("waiting: %d connections, sleepers %+v", conns, r.SleepStats())
					time.Sleep(time.Second)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		// Let registrations, mailbox opens and keep-alives settle.
		time.Sleep(5 * time.Second)
		regs := r.localRegistrations()
		r.mailbox.mu.Lock()
		mboxes := len(r.mailbox.boxes)
		r.mailbox.mu.Unlock()
		conns, _ := r.conns.counts()
		s := idleMemSnapshot(t)
		kind := "IDLE"
		if sleeping {
			kind = "SLEEPING"
		}
		t.Logf("%s n=%d regs=%d mailboxes=%d conns=%d sleepers=%d cids=%d: heap %.0f B/listener, RSS %.0f B/listener, goroutines %d (opened in %v)",
			kind, n, regs, mboxes, conns, r.SleepStats().Sleeping, r.table.Len(), float64(s.heap-base.heap)/float64(n), float64(s.rss-base.rss)/float64(n), s.goroutines, took.Round(time.Millisecond))
		if sleeping {
			// The connections the listeners held before they slept left
			// freed pages that the runtime returns to the OS only
			// slowly: the RSS once they are returned is the steady
			// state's.
			debug.FreeOSMemory()
			f := idleMemSnapshot(t)
			t.Logf("SLEEPING n=%d: after returning freed memory to the OS: heap %.0f B/listener, RSS %.0f B/listener",
				n, float64(f.heap-base.heap)/float64(n), float64(f.rss-base.rss)/float64(n))
			ss := r.SleepStats()
			t.Logf("SLEEPING n=%d: keep-alives %d, dropped %v, expired %d", n, ss.KeepAlives, ss.Dropped, ss.Expired)
		}
		t.Logf("IDLE n=%d: the listeners' process: RSS %.0f B/listener", n, float64(childRSS)/float64(n))
		if regs < n || mboxes < n {
			t.Errorf("relay holds %d registrations and %d mailboxes, want %d", regs, mboxes, n)
		}
	}
	if p := os.Getenv(measureIdleProfEnv); p != "" {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			t.Fatal(err)
		}
	}
}

// idleMeasureRelayConfig lifts the per-source bounds (every listener of
// the measurement shares one address) and the totals.
func idleMeasureRelayConfig(key ed25519.PrivateKey) *RelayConfig {
	return &RelayConfig{
		Identity:                  key,
		MaxRegistrations:          1 << 20,
		MaxRegistrationsPerSource: 1 << 20,
		MaxCIDs:                   1 << 26,
		MaxCIDsPerSource:          1 << 26,
		DerivationsPerSecond:      1 << 30,
		DerivationBurst:           1 << 26,
		MaxConnsPerSource:         1 << 20,
		MaxConns:                  1 << 20,
		Mailbox: &MailboxConfig{
			MaxMailboxes:          1 << 20,
			MaxMailboxesPerSource: 1 << 20,
		},
	}
}

type idleMem struct {
	heap, rss  int64
	goroutines int
}

func idleMemSnapshot(t *testing.T) idleMem {
	t.Helper()
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, err := procSelfRSS()
	if err != nil {
		t.Fatal(err)
	}
	return idleMem{heap: int64(ms.HeapAlloc), rss: rss, goroutines: runtime.NumGoroutine()}
}

// procSelfRSS reads the resident set size of this process from
// /proc/self/status.
func procSelfRSS() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/self/status")
}

// TestMeasureIdlePeersChild is the listeners' process of
// TestMeasureIdlePeers: it reads a count per line on stdin, opens idle
// listeners until it holds that many, and answers "idle N RSS" (its own
// resident set size in bytes).
func TestMeasureIdlePeersChild(t *testing.T) {
	env := os.Getenv(measureIdleChildEnv)
	if env == "" {
		t.Skip("run by TestMeasureIdlePeers")
	}
	addr, keyHex, _ := strings.Cut(env, ",")
	rk, err := hex.DecodeString(keyHex)
	if err != nil {
		t.Fatal(err)
	}
	// One socket per listener: lift the descriptor limit (root may).
	lim := syscall.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Logf("RLIMIT_NOFILE: %v", err)
	}
	// Nobody dials them: any key will do.
	dialer, _, _ := ed25519.GenerateKey(nil)
	ctx := context.Background()
	var (
		mu   sync.Mutex
		accs []*Accepter
	)
	defer func() {
		for _, a := range accs {
			a.Close()
		}
	}()
	// Awake listeners never sleep; sleeping ones sleep a second after
	// opening their mailbox.
	sleepAfter := time.Duration(-1)
	if os.Getenv(measureIdleSleepEnv) == "1" {
		sleepAfter = time.Second
	}
	maxRSS := int64(3500 << 20)
	if v := os.Getenv(measureIdleMaxRSSEnv); v != "" {
		mb, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("%s: %v", measureIdleMaxRSSEnv, err)
		}
		maxRSS = mb << 20
	}
	if os.Getenv(measureIdleSleepEnv) == "light" {
		lightChild(t, addr, rk, maxRSS)
		return
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		n, err := strconv.Atoi(in.Text())
		if err != nil {
			t.Fatal(err)
		}
		if err := openInParallel(t, len(accs), n, maxRSS, "listener", func() error {
			a, err := openIdleListener(ctx, addr, rk, dialer, sleepAfter)
			if err == nil {
				mu.Lock()
				accs = append(accs, a)
				mu.Unlock()
			}
			return err
		}); err != nil {
			fmt.Printf("failed %v\n", err)
			return
		}
		for sleepAfter > 0 {
			awake := 0
			for _, a := range accs {
				if !a.Asleep() {
					awake++
				}
			}
			if awake == 0 {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if sleepAfter > 0 {
			debug.FreeOSMemory() // what the connections held before sleeping
		}
		rss, err := procSelfRSS()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("idle %d %d\n", len(accs), rss)
	}
}

// openIdleListener makes an Accepter registered at the relay with its
// mailbox open.
func openIdleListener(ctx context.Context, relay string, relayKey, dialer ed25519.PublicKey, sleepAfter time.Duration) (*Accepter, error) {
	_, id, _ := ed25519.GenerateKey(nil)
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	a, err := NewAccepter(ctx, &Config{RelayAddr: relay, RelayKey: relayKey, Identity: id, TrustedPeers: []ed25519.PublicKey{dialer},
		DisableDirect: true, SleepAfter: sleepAfter})
	if err != nil {
		return nil, err
	}
	if err := a.OpenMailbox(ctx); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// lightChild is TestMeasureIdlePeersChild with light sleepers.
func lightChild(t *testing.T, relay string, relayKey ed25519.PublicKey, maxRSS int64) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ls := &lightSleepers{relay: netip.MustParseAddrPort(relay)}
	ip := net.IPv4(127, 0, 0, 1)
	if v := os.Getenv(measureIdleChildIPEnv); v != "" {
		ip = net.ParseIP(v)
	}
	defer ls.close()
	go ls.run(ctx)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		n, err := strconv.Atoi(in.Text())
		if err != nil {
			t.Fatal(err)
		}
		if err := openInParallel(t, ls.count(), n, maxRSS, "sleeper", func() error {
			sl, err := openLightSleeper(ctx, relay, relayKey, ip)
			if err == nil {
				ls.add(sl)
			}
			return err
		}); err != nil {
			fmt.Printf("failed %v\n", err)
			return
		}
		debug.FreeOSMemory()
		rss, err := procSelfRSS()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("idle %d %d\n", ls.count(), rss)
	}
}

// openInParallel calls open from 16 goroutines until the process holds n
// listeners (have of them already), each given three tries (on a loaded
// machine a handshake may time out). It stops early, with an error, once
// the process holds more than maxRSS bytes, so that the machine lives.
func openInParallel(t *testing.T, have, n int, maxRSS int64, what string, open func() error) error {
	var next atomic.Int64
	next.Store(int64(have))
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(n) && failed.Load() == nil; i = next.Add(1) {
				if i%1000 == 0 {
					if rss, _ := procSelfRSS(); rss > maxRSS {
						err := fmt.Errorf("the listeners' process holds %d MB at %d listeners, over %s", rss>>20, i, measureIdleMaxRSSEnv)
						failed.Store(&err)
						return
					}
				}
				var err error
				for range 3 {
					if err = open(); err == nil {
						break
					}
					t.Logf("retrying a %s: %v", what, err)
				}
				if err != nil {
					failed.Store(&err)
					return
				}
			}
		})
	}
	wg.Wait()
	if e := failed.Load(); e != nil {
		return *e
	}
	return nil
}

package quicpipe

// The soak test runs many pipes through one relay, every peer behind an
// impairing NAT that delays each datagram by 20 ms and loses 5% of them in
// each direction. The relay runs as a separate process (this test binary,
// re-run), so that it can be restarted and its memory measured:
//
//	accepters ─┐   impairing NAT (userspace,    ┌─ relay process
//	dialers ───┴── one outside port per peer, ──┘  (127.0.0.1:R)
//	               20 ms, 5% loss each way)
//
// This kernel has no netem (CONFIG_NET_SCH_NETEM is not set), so delay and
// loss come from the proxy instead of tc. In the middle of the run the relay
// is restarted on the same address and every peer's NAT mapping rebinds to a
// new port; every pipe's bytes are checked with SHA-256.

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

var (
	soakPipes = flag.Int("soak.pipes", 1000, "concurrent pipes in TestSoak")
	soakBytes = flag.Int("soak.bytes", 16<<10, "bytes each pipe echoes per phase in TestSoak")
)

const soakRelayEnv = "QUICPIPE_SOAK_RELAY"

// TestSoakRelayMain is the relay process of TestSoak; it does nothing in a
// normal run.
func TestSoakRelayMain(t *testing.T) {
	spec := os.Getenv(soakRelayEnv)
	if spec == "" {
		t.Skip("helper process of TestSoak")
	}
	addr, seedHex, _ := strings.Cut(spec, ",")
	seed, _ := hex.DecodeString(seedHex)
	r, err := ListenRelay(addr, &RelayConfig{
		Identity: ed25519.NewKeyFromSeed(seed),
		// Every peer comes from 127.0.0.1: one source.
		MaxRegistrationsPerSource: 10000,
		MaxCIDsPerSource:          1 << 22,
		DerivationBurst:           1 << 22,
		// Every peer comes from 127.0.0.1, and they all start at once.
		MaxConnsPerSource: 10000,
		MaxHandshakes:     10000,
	})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("ready", r.LocalAddr())
	go func() { // exit when the parent closes stdin
		bufio.NewReader(os.Stdin).ReadString('\n')
		r.Close()
	}()
	r.Serve(context.Background())
	os.Exit(0)
}

// soakRelay is the relay process.
type soakRelay struct {
	cmd   *exec.Cmd
	stdin *os.File
	addr  string
}

func startSoakRelay(t *testing.T, addr string, seed []byte) *soakRelay {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, _ := os.Pipe()
	cmd := exec.Command(exe, "-test.run=^TestSoakRelayMain$", "-test.count=1")
	cmd.Env = append(os.Environ(), soakRelayEnv+"="+addr+","+hex.EncodeToString(seed))
	cmd.Stdin = pr
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready ") {
		cmd.Process.Kill()
		t.Fatalf("relay process: %q %v", line, err)
	}
	r := &soakRelay{cmd: cmd, stdin: pw, addr: strings.TrimSpace(strings.TrimPrefix(line, "ready "))}
	t.Cleanup(func() { r.stop() })
	return r
}

func (r *soakRelay) rssKiB() int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	return -1
}

func (r *soakRelay) stop() {
	if r.cmd.ProcessState != nil {
		return
	}
	r.stdin.Close()
	done := make(chan struct{})
	go func() { r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		r.cmd.Process.Kill()
		<-done
	}
}

func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak test skipped in -short mode")
	}
	pipes, size := *soakPipes, *soakBytes
	if raceEnabled && pipes > 200 {
		pipes = 200 // the race detector multiplies CPU and memory
	}

	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	defer cancel()
	start := time.Now()
	seed := make([]byte, 32)
	copy(seed, "quicpipe soak relay")
	relayID := ed25519.NewKeyFromSeed(seed)
	relay := startSoakRelay(t, "127.0.0.1:0", seed)
	rssIdle := relay.rssKiB()

	relayUDP, _ := net.ResolveUDPAddr("udp", relay.addr)
	nat := newImpairNAT(t, relayUDP, 20*time.Millisecond, 0.05)

	aID := GenerateIdentity()
	bID := GenerateIdentity()
	base := Config{
		RelayAddr:    nat.inside.LocalAddr().String(), // every peer is behind the NAT
		RelayKey:     relayID.Public().(ed25519.PublicKey),
		RelayTimeout: 20 * time.Second,
		// Every pipe stays on the relay: the peers share loopback and would
		// otherwise move to a direct path.
		DisableDirect: true,
	}
	type pipe struct {
		d     *quic.Conn
		a     *Accepter
		ac    *quic.Conn
		bytes int64
	}
	ps := make([]*pipe, pipes)
	var setupErrs atomic.Int32
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := range ps {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			acfg := base
			acfg.Identity, acfg.TrustedPeers = bID, []ed25519.PublicKey{aID.Public().(ed25519.PublicKey)}
			a, err := NewAccepter(ctx, &acfg)
			if err != nil {
				t.Errorf("pipe %d: accepter: %v", i, err)
				setupErrs.Add(1)
				return
			}
			t.Cleanup(func() { a.Close() })
			dcfg := base
			dcfg.Identity = aID
			acc := make(chan *quic.Conn, 1)
			d, err := Dial(ctx, &dcfg, bID.Public().(ed25519.PublicKey), func(ctx context.Context, f *FirstFlight) error {
				go func() {
					c, err := a.Accept(ctx, f)
					if err != nil {
						t.Errorf("pipe %d: accept: %v", i, err)
					}
					acc <- c
				}()
				return nil
			})
			if err != nil {
				t.Errorf("pipe %d: dial: %v", i, err)
				setupErrs.Add(1)
				return
			}
			t.Cleanup(func() { d.CloseWithError(0, "") })
			ac := <-acc
			if ac == nil {
				setupErrs.Add(1)
				return
			}
			serveEcho(ctx, ac)
			ps[i] = &pipe{d: d, a: a, ac: ac}
		})
	}
	wg.Wait()
	if setupErrs.Load() > 0 {
		t.Fatalf("%d of %d pipes failed to set up", setupErrs.Load(), pipes)
	}
	setup := time.Since(start)
	rssPipes := relay.rssKiB()

	phase := func(name string) {
		t.Helper()
		pstart := time.Now()
		var failed atomic.Int32
		var wg sync.WaitGroup
		for i, p := range ps {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				if err := echo(ctx, p.d, size, byte(i)); err != nil {
					t.Errorf("%s: pipe %d: %v", name, i, err)
					failed.Add(1)
					return
				}
				atomic.AddInt64(&p.bytes, int64(2*size))
			})
		}
		wg.Wait()
		if failed.Load() > 0 {
			t.Fatalf("%s: %d pipes failed", name, failed.Load())
		}
		t.Logf("%s: %d pipes echoed %d bytes each in %v", name, pipes, size, time.Since(pstart).Round(time.Millisecond))
	}
	phase("phase 1")

	// Restart the relay on the same address with the same identity.
	relay.stop()
	restart := time.Now()
	relay2 := startSoakRelay(t, relay.addr, seed)
	phase("phase 2 (after relay restart)")
	resumed := time.Since(restart)

	nat.rebindAll(t)
	phase("phase 3 (after every NAT mapping rebound)")

	var total int64
	for _, p := range ps {
		total += p.bytes
	}
	perPipe := 0
	if rssPipes > 0 && rssIdle > 0 {
		perPipe = (rssPipes - rssIdle) * 1024 / pipes
	}
	t.Logf("SOAK pipes=%d bytes=%d restarts_survived=1 nat_rebindings=%d bytes_lost=0 setup=%v resume_after_restart=%v relay_rss_idle=%dKiB relay_rss_with_pipes=%dKiB relay_bytes_per_pipe=%d relay2_rss=%dKiB total=%v",
		pipes, total, 2*pipes, setup.Round(time.Millisecond), resumed.Round(time.Millisecond), rssIdle, rssPipes, perPipe, relay2.rssKiB(), time.Since(start).Round(time.Millisecond))
}

// impairNAT is a userspace NAT on loopback in front of the relay: each
// inside client gets its own outside socket (its "public port"), and every
// datagram in either direction is delayed and, with probability loss,
// dropped (both may be zero). rebindAll gives every client a new outside
// port, as a NAT does when its mappings expire.
type impairNAT struct {
	inside *net.UDPConn
	relay  *net.UDPAddr
	delay  time.Duration
	loss   float64

	mu      sync.Mutex
	clients map[netip.AddrPort]*natClient
	closed  bool
	rng     *rand.Rand
	wg      sync.WaitGroup
}

type natClient struct {
	addr *net.UDPAddr
	out  atomic.Pointer[net.UDPConn]
}

func newImpairNAT(t *testing.T, relay *net.UDPAddr, delay time.Duration, loss float64) *impairNAT {
	in, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	in.SetReadBuffer(8 << 20)
	n := &impairNAT{inside: in, relay: relay, delay: delay, loss: loss,
		clients: make(map[netip.AddrPort]*natClient), rng: rand.New(rand.NewPCG(1, 2))}
	n.wg.Go(func() {
		for {
			buf := make([]byte, 1500)
			k, from, err := in.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c := n.client(t, from)
			if c == nil {
				return
			}
			n.later(buf[:k], func(b []byte) { c.out.Load().WriteToUDP(b, n.relay) })
		}
	})
	t.Cleanup(func() {
		n.mu.Lock()
		n.closed = true
		in.Close()
		for _, c := range n.clients {
			c.out.Load().Close()
		}
		n.mu.Unlock()
		n.wg.Wait()
	})
	return n
}

// later sends b after the delay unless it is lost. Without delay it sends
// at once, keeping the order of the datagrams.
func (n *impairNAT) later(b []byte, send func([]byte)) {
	if n.loss > 0 {
		n.mu.Lock()
		lost := n.rng.Float64() < n.loss
		n.mu.Unlock()
		if lost {
			return
		}
	}
	if n.delay == 0 {
		send(b)
		return
	}
	time.AfterFunc(n.delay, func() { send(b) })
}

func (n *impairNAT) client(t *testing.T, from netip.AddrPort) *natClient {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	c := n.clients[from]
	if c == nil {
		c = &natClient{addr: net.UDPAddrFromAddrPort(from)}
		n.clients[from] = c
		n.bindLocked(t, c)
	}
	return c
}

// bindLocked gives c a new outside socket and serves its answers.
func (n *impairNAT) bindLocked(t *testing.T, c *natClient) {
	out, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Error(err)
		return
	}
	out.SetReadBuffer(1 << 20)
	if old := c.out.Swap(out); old != nil {
		old.Close() // the old mapping is gone: answers to it are lost
	}
	n.wg.Go(func() {
		for {
			buf := make([]byte, 1500)
			k, _, err := out.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			n.later(buf[:k], func(b []byte) { n.inside.WriteToUDP(b, c.addr) })
		}
	})
}

func (n *impairNAT) rebindAll(t *testing.T) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range n.clients {
		n.bindLocked(t, c)
	}
}

package main

// Comparison 4: relay memory.
//
//   - Quicpipe, per registered CID: a relay process (limits raised) on
//     loopback, registrations made through its public API (POST
//     /v1/register over HTTP/3, from one client connection), heap after a
//     full collection (runtime.MemStats.HeapAlloc) and RSS measured before
//     and after each step. Two layouts: 64 CIDs per key (what every peer
//     registers by default, so the registration's own state is included)
//     and one key with a window of all the CIDs (the table alone).
//   - Quicpipe, per active pipe: P pipes (a dialer and an accepter each,
//     both registered, each with its HTTP/3 connection to the relay, and a
//     QUIC connection between them through the relay), relay heap and RSS
//     before and after.
//   - coturn, per allocation: N TURN allocations from N client sockets,
//     coturn's RSS before and after (its allocations are malloc'ed state;
//     each also holds a relay socket in the kernel, not counted in RSS).
//     pion/turn likewise, heap and RSS.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quicpipe/quicpipe"
	"golang.org/x/sys/unix"
)

func init() {
	roles["memclient"] = memClientRole
	roles["pipes"] = pipesRole
	roles["turnalloc"] = turnAllocRole
}

func runMemory(ctx context.Context, res *Results, opt options, outDir string) error {
	lab, err := newLoopLab()
	if err != nil {
		return err
	}
	defer lab.Close()
	perCID := res.figure("memory_per_cid", "memory", "Relay memory per registered CID (heap after GC)",
		"registered through POST /v1/register", "bytes per CID", false)
	perCID.Explanation = "Growth of the relay's Go heap (runtime.MemStats.HeapAlloc after runtime.GC) per registered CID, measured at each total. \"64 per key\" is what peers register (window 64): each registration's own state is included; \"one key\" registers a single window of all the CIDs."
	perCIDRSS := res.figure("memory_per_cid_rss", "memory", "Relay memory per registered CID (resident set size)",
		"registered through POST /v1/register", "bytes per CID", false)
	perCIDRSS.Explanation = "Growth of the relay process's RSS per registered CID: what the machine pays, Go runtime overheads included."
	perPeer := res.figure("memory_per_peer", "memory", "Relay memory per registered peer against a TURN allocation (resident set size)",
		fmt.Sprintf("Quicpipe: 1M CIDs in windows of 64, and %d pipes; TURN: %d allocations", opt.memPipes, opt.turnAllocs), "bytes", false)
	perPeer.Explanation = "What one peer costs the relay. A Quicpipe registration alone is a window of 64 CIDs (from the per-CID run); a registered peer also keeps an HTTP/3 connection to the relay, whose quic-go state dominates (half of the per-pipe figure). A TURN allocation is the server's state for one client (its relay socket's kernel memory is not in RSS); a WebRTC peer behind TURN needs one."
	failed := map[string]bool{}
	miss := func(what string, err error) {
		if !failed[what] {
			res.missing(what, err)
			failed[what] = true
		}
	}
	for rep := 0; rep < opt.reps; rep++ {
		for _, layout := range []struct {
			name   string
			perKey int
		}{{"64 CIDs per key", 64}, {"one key", 0}} {
			logf("memory: Quicpipe, %s", layout.name)
			if err := memoryCIDs(lab, perCID, perCIDRSS, perPeer, opt, layout.name, layout.perKey); err != nil {
				miss("memory: Quicpipe per CID, "+layout.name, err)
			}
		}
		logf("memory: Quicpipe, per active pipe")
		if err := memoryPipes(lab, res, perPeer, opt); err != nil {
			miss("memory: Quicpipe per active pipe", err)
		}
		logf("memory: TURN allocations")
		memoryTURN(lab, perPeer, opt, miss)
	}
	return nil
}

func relayHeap(p *proc) (relayStats, error) {
	var st relayStats
	err := p.call(120*time.Second, &st, "heap")
	return st, err
}

func memoryCIDs(lab *Lab, heapFig, rssFig, peerFig *Figure, opt options, layout string, perKey int) error {
	relay, err := lab.startRole("quicpipe-relay", "l", -1, "relay", "-listen", "127.0.0.1:4433", "-big")
	if err != nil {
		return err
	}
	defer relay.stop()
	cl, err := lab.startRole("memclient", "l", -1, "memclient", "-relay", "127.0.0.1:4433",
		"-relaykey", hex.EncodeToString(pub(benchKey("relay"))))
	if err != nil {
		return err
	}
	defer cl.stop()
	base, err := relayHeap(relay)
	if err != nil {
		return err
	}
	done := 0
	for _, n := range opt.memCIDs {
		per := perKey
		if per == 0 {
			per = n - done
		} else {
			n = (n + per - 1) / per * per // whole windows: 1024, 10048, 1000000
		}
		var r struct{ CIDs int }
		if err := cl.call(600*time.Second, &r, "register", n-done, per); err != nil {
			return err
		}
		done = n
		st, err := relayHeap(relay)
		if err != nil {
			return err
		}
		if st.CIDs != n+1 { // and the client's first registration, in the base
			return fmt.Errorf("relay holds %d CIDs, want %d", st.CIDs, n+1)
		}
		name := fmt.Sprintf("Quicpipe, %s", layout)
		cond := fmt.Sprintf("%s CIDs", humanCount(roundCount(n)))
		h := float64(int64(st.HeapAlloc)-int64(base.HeapAlloc)) / float64(n)
		rss := float64(st.RSS-base.RSS) / float64(n)
		heapFig.add(name+" @ "+cond, false, h)
		rssFig.add(name+" @ "+cond, false, rss)
		if perKey > 0 && n == opt.memCIDs[len(opt.memCIDs)-1] {
			peerFig.add("Quicpipe: a registration (64 CIDs)", false, rss*float64(perKey))
		}
		logf("  %s, %s: %.0f bytes/CID heap, %.0f bytes/CID RSS (%d registrations)", layout, cond, h, rss, st.Regs)
	}
	return nil
}

// roundCount undoes the rounding to whole windows for labels.
func roundCount(n int) int {
	for _, r := range []int{1000, 10000, 100000, 1000000} {
		if n >= r && n < r+64 {
			return r
		}
	}
	return n
}

func humanCount(n int) string {
	switch {
	case n >= 1000000 && n%1000000 == 0:
		return fmt.Sprintf("%dM", n/1000000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return strconv.Itoa(n)
}

func memoryPipes(lab *Lab, res *Results, peerFig *Figure, opt options) error {
	relay, err := lab.startRole("quicpipe-relay", "l", -1, "relay", "-listen", "127.0.0.1:4433", "-big")
	if err != nil {
		return err
	}
	defer relay.stop()
	base, err := relayHeap(relay)
	if err != nil {
		return err
	}
	pipes, err := lab.startRole("pipes", "l", -1, "pipes", "-relay", "127.0.0.1:4433",
		"-relaykey", hex.EncodeToString(pub(benchKey("relay"))))
	if err != nil {
		return err
	}
	defer pipes.stop()
	var r struct{ Pipes int }
	if err := pipes.call(300*time.Second, &r, "open", opt.memPipes); err != nil {
		return err
	}
	st, err := relayHeap(relay)
	if err != nil {
		return err
	}
	fig := res.figure("memory_per_pipe", "memory", "Relay memory per active pipe",
		fmt.Sprintf("%d pipes open through one relay", r.Pipes), "bytes per pipe", false)
	fig.Explanation = "A pipe is two registered peers (64 CIDs each), their two HTTP/3 connections to the relay (quic-go state included) and one QUIC connection between them through the relay. coturn's equivalent is two allocations (see the per-allocation figure)."
	h := float64(int64(st.HeapAlloc)-int64(base.HeapAlloc)) / float64(r.Pipes)
	rss := float64(st.RSS-base.RSS) / float64(r.Pipes)
	fig.add("Quicpipe relay, heap", false, h)
	fig.add("Quicpipe relay, RSS", false, rss)
	peerFig.add("Quicpipe: a registered peer with its HTTP/3 connection (half a pipe)", false, rss/2)
	logf("  %d pipes: %.0f bytes/pipe heap, %.0f bytes/pipe RSS", r.Pipes, h, rss)
	return nil
}

func memoryTURN(lab *Lab, fig *Figure, opt options, miss func(string, error)) {
	for _, srv := range []string{"coturn", "pion/turn"} {
		err := func() error {
			var p *proc
			var err error
			heap := func() (int64, error) { return procRSS(p.pid()) }
			if srv == "coturn" {
				if err := haveCoturn(); err != nil {
					return err
				}
				dir, err := tempDir(lab, "coturn-")
				if err != nil {
					return err
				}
				conf, err := coturnConfig(dir, "127.0.0.1", coturnThreads)
				if err != nil {
					return err
				}
				if p, err = lab.start("coturn", "l", -1, "turnserver", "-c", conf); err != nil {
					return err
				}
			} else {
				if p, err = lab.startRole("pion-turn", "l", -1, "pionturn", "-listen", "127.0.0.1:3478", "-relayip", "127.0.0.1"); err != nil {
					return err
				}
			}
			defer p.stop()
			cl, err := lab.startRole("turnalloc", "l", -1, "turnalloc", "-server", "127.0.0.1:3478")
			if err != nil {
				return err
			}
			defer cl.stop()
			// One allocation first: the server's lazily made state is then
			// in the baseline.
			if err := cl.call(120*time.Second, nil, "alloc", 1); err != nil {
				return err
			}
			time.Sleep(500 * time.Millisecond)
			r0, err := heap()
			if err != nil {
				return err
			}
			var r struct{ Allocations int }
			if err := cl.call(600*time.Second, &r, "alloc", opt.turnAllocs); err != nil {
				return err
			}
			time.Sleep(500 * time.Millisecond)
			r1, err := heap()
			if err != nil {
				return err
			}
			per := float64(r1-r0) / float64(r.Allocations)
			fig.add(srv+": an allocation", true, per)
			logf("  %s: %.0f bytes/allocation RSS (%d allocations)", srv, per, r.Allocations)
			return nil
		}()
		if err != nil {
			miss("memory: "+srv+" per allocation", err)
		}
	}
}

// memClientRole registers CIDs with a relay over one HTTP/3 connection.
func memClientRole(args []string) error {
	relay, rk, err := parseRelayFlags(flag.NewFlagSet("memclient", flag.ContinueOnError), args)
	if err != nil {
		return err
	}
	tlsConf, err := quicpipe.ClientTLSConfig(nil, rk, http3.NextProtoH3)
	if err != nil {
		return err
	}
	tr := &http3.Transport{TLSClientConfig: tlsConf, QUICConfig: &quic.Config{MaxIdleTimeout: 5 * time.Minute, KeepAlivePeriod: 10 * time.Second}}
	defer tr.Close()
	client := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	url := "https://" + relay + "/v1/register"
	register := func(num int) error {
		key := make([]byte, 32)
		rand.Read(key)
		// The registration body of docs/PROTOCOL.md.
		body, _ := json.Marshal(struct {
			Key   []byte `json:"key"`
			Num   uint32 `json:"num"`
			First uint32 `json:"first"`
		}{key, uint32(num), 1})
		resp, err := client.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("register: %s: %s", resp.Status, b)
		}
		return nil
	}
	if err := register(1); err != nil { // opens the connection
		return err
	}
	total := 1
	say("ready", nil)
	serveCommands(func(cmd string, a []string) (any, error) {
		if cmd != "register" || len(a) != 2 {
			return nil, errors.New("usage: register CIDS PER_KEY")
		}
		n, _ := strconv.Atoi(a[0])
		per, _ := strconv.Atoi(a[1])
		if per < 1 || n < per || n%per != 0 {
			return nil, fmt.Errorf("%d CIDs are not a multiple of %d", n, per)
		}
		keys := n / per
		var next atomic.Int64
		var wg sync.WaitGroup
		errc := make(chan error, 1)
		for range 32 {
			wg.Go(func() {
				for next.Add(1) <= int64(keys) {
					if err := register(per); err != nil {
						select {
						case errc <- err:
						default:
						}
						return
					}
				}
			})
		}
		wg.Wait()
		select {
		case err := <-errc:
			return nil, err
		default:
		}
		total += n
		return map[string]int{"cids": total}, nil
	})
	return nil
}

// pipesRole opens pipes through a relay and holds them open.
func pipesRole(args []string) error {
	relay, rk, err := parseRelayFlags(flag.NewFlagSet("pipes", flag.ContinueOnError), args)
	if err != nil {
		return err
	}
	say("ready", nil)
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	var mu sync.Mutex
	serveCommands(func(cmd string, a []string) (any, error) {
		if cmd != "open" || len(a) != 1 {
			return nil, errors.New("usage: open PIPES")
		}
		n, _ := strconv.Atoi(a[0])
		ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
		defer cancel()
		dialerKey, accKey := benchKey("dialer"), benchKey("accepter")
		base := quicpipe.Config{RelayAddr: relay, RelayKey: rk, DisableDirect: true}
		var wg sync.WaitGroup
		var opened atomic.Int64
		errc := make(chan error, 1)
		sem := make(chan struct{}, 16)
		for range n {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				acfg := base
				acfg.Identity, acfg.TrustedPeers = accKey, []ed25519.PublicKey{pub(dialerKey)}
				acc, err := quicpipe.NewAccepter(ctx, &acfg)
				if err != nil {
					select {
					case errc <- err:
					default:
					}
					return
				}
				dcfg := base
				dcfg.Identity = dialerKey
				accepted := make(chan *quic.Conn, 1)
				conn, err := quicpipe.Dial(ctx, &dcfg, pub(accKey), func(ctx context.Context, f *quicpipe.FirstFlight) error {
					go func() {
						c, err := acc.Accept(ctx, f)
						if err == nil {
							accepted <- c
						}
					}()
					return nil
				})
				if err != nil {
					acc.Close()
					select {
					case errc <- err:
					default:
					}
					return
				}
				mu.Lock()
				closers = append(closers, connCloser{conn}, acc)
				mu.Unlock()
				opened.Add(1)
			})
		}
		wg.Wait()
		select {
		case err := <-errc:
			return nil, err
		default:
		}
		return map[string]int64{"pipes": opened.Load()}, nil
	})
	return nil
}

// turnAllocRole makes TURN allocations, one per client socket, and keeps
// them (and the sockets) until it exits.
func turnAllocRole(args []string) error {
	fs := flag.NewFlagSet("turnalloc", flag.ContinueOnError)
	server := fs.String("server", "", "TURN server address:port")
	if err := fs.Parse(args); err != nil {
		return err
	}
	srv, err := netip.ParseAddrPort(*server)
	if err != nil {
		return err
	}
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && rl.Cur < 65536 {
		rl.Cur = min(rl.Max, 65536)
		unix.Setrlimit(unix.RLIMIT_NOFILE, &rl)
	}
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	say("ready", nil)
	serveCommands(func(cmd string, a []string) (any, error) {
		if cmd != "alloc" || len(a) != 1 {
			return nil, errors.New("usage: alloc N")
		}
		n, _ := strconv.Atoi(a[0])
		var mu sync.Mutex
		var wg sync.WaitGroup
		var next atomic.Int64
		errc := make(chan error, 1)
		made := 0
		for range 32 {
			wg.Go(func() {
				for next.Add(1) <= int64(n) {
					fd, err := bindUDP(netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0))
					if err == nil {
						c := &turnClient{fd: fd, server: srv}
						_, err = c.allocate(30 * time.Second)
					}
					if err != nil {
						select {
						case errc <- err:
						default:
						}
						return
					}
					mu.Lock()
					fds = append(fds, fd)
					made++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		select {
		case err := <-errc:
			return nil, err
		default:
		}
		return map[string]int{"allocations": made}, nil
	})
	return nil
}

// connCloser closes a peer connection (and so the Dialer it owns).
type connCloser struct{ *quic.Conn }

func (c connCloser) Close() error { return c.CloseWithError(0, "") }

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
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicpipe/quicpipe/internal/netlab"
)

// BenchmarkPathThroughput measures bulk throughput between two peers behind
// port-preserving NATs in the NAT lab (direct_netns_test.go), three ways in
// one run: a plain quic-go connection between the same two namespaces
// (through a port forward on B's NAT, with the same quic.Config as a
// quicpipe peer), a quicpipe connection on its direct path, and one kept on
// the relay (DisableDirect). It reports each one's throughput and the
// ratios to the plain connection, on bare veth links and on B's uplink
// shaped to 200 Mbit/s with 25 ms each way (a 50 ms round trip that the
// relayed path crosses too). The relay runs as its own process so that its
// CPU time can be reported (relay-cpu-%: of one core, over the relayed
// transfers). Each iteration transfers once per way, interleaved; run with
// -benchtime=Nx for N rounds:
//
//	go test -run '^$' -bench PathThroughput -benchtime 5x .
func BenchmarkPathThroughput(b *testing.B) {
	for _, sc := range []struct {
		name   string
		uplink netlab.Shape
		size   int
	}{
		{"bare", netlab.Shape{}, 64 << 20},
		{"200mbit-25ms", netlab.Shape{Delay: 25 * time.Millisecond, RateMbit: 200}, 48 << 20},
	} {
		b.Run(sc.name, func(b *testing.B) { benchPaths(b, sc.uplink, sc.size) })
	}
}

func benchPaths(b *testing.B, uplink netlab.Shape, size int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	l := newBenchLab(b, uplink)

	// Plain quic-go: a server in B's namespace behind a port forward.
	qconf := (&Config{}).peerQUICConfig()
	plainC, plainS := plainPair(b, ctx, l, qconf)

	// quicpipe, direct and relayed. The dialer's first RTT sample runs from
	// handing over the first flight to the accepter's answer, so the flight
	// is delivered after a one-way trip, as if it had crossed the same
	// network: an instant delivery would make the sample half the round
	// trip, and quic-go's slow start (HyStart, which keeps the minimum RTT)
	// would then stop far too early on the shaped link.
	direct := dialDirect(b, ctx, l.relayAddr, l.relayID, l.aID, l.bID,
		&Config{Conn: l.peerSocket(b, l.peerA)}, &Config{Conn: l.peerSocket(b, l.peerB)}, uplink.Delay)
	direct.waitDirect(b, ctx)
	off := func(ns *netlab.NS) *Config { return &Config{Conn: l.peerSocket(b, ns), DisableDirect: true} }
	relayed := dialDirect(b, ctx, l.relayAddr, l.relayID, l.aID, l.bID, off(l.peerA), off(l.peerB), uplink.Delay)

	// One transfer each to warm up (slow start, buffers).
	for _, p := range [][2]*quic.Conn{{plainC, plainS}, {direct.dc, direct.ac}, {relayed.dc, relayed.ac}} {
		if _, err := timedTransfer(ctx, p[0], p[1], 4<<20); err != nil {
			b.Fatal(err)
		}
	}
	var tPlain, tDirect, tRelayed []float64 // Mbit/s
	var relayCPU, relayWall time.Duration
	b.ResetTimer()
	for range b.N {
		for _, m := range []struct {
			c, s *quic.Conn
			out  *[]float64
		}{{plainC, plainS, &tPlain}, {direct.dc, direct.ac, &tDirect}, {relayed.dc, relayed.ac, &tRelayed}} {
			cpu0 := l.relayCPU(b)
			d, err := timedTransfer(ctx, m.c, m.s, size)
			if err != nil {
				b.Fatal(err)
			}
			if m.out == &tRelayed {
				relayCPU += l.relayCPU(b) - cpu0
				relayWall += d
			}
			*m.out = append(*m.out, float64(size)*8/d.Seconds()/1e6)
		}
	}
	b.StopTimer()
	if info, _ := direct.d.Path(direct.dc); info.Kind != PathDirect {
		b.Errorf("the direct connection left its path: %+v", info)
	}
	// With direct paths off nothing manages the connection's path (Path
	// reports false, and a zero PathInfo, whose Kind is PathRelayed).
	if info, ok := relayed.d.Path(relayed.dc); ok {
		b.Errorf("the relayed connection has a managed path: %+v", info)
	}
	med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	mp, md, mr := med(tPlain), med(tDirect), med(tRelayed)
	b.ReportMetric(mp, "plain-Mbit/s")
	b.ReportMetric(md, "direct-Mbit/s")
	b.ReportMetric(mr, "relayed-Mbit/s")
	b.ReportMetric(md/mp, "direct/plain")
	b.ReportMetric(mr/mp, "relayed/plain")
	b.ReportMetric(100*relayCPU.Seconds()/relayWall.Seconds(), "relay-cpu-%")
	b.ReportMetric(relayCPU.Seconds()*1e6/(float64(b.N)*float64(size)/(1<<20)), "relay-cpu-µs/MB")
	b.Logf("plain %.0f, direct %.0f, relayed %.0f Mbit/s (all runs: %.0f / %.0f / %.0f); direct: dialer %+v, accepter %+v",
		mp, md, mr, tPlain, tDirect, tRelayed, direct.d.DirectStats(), direct.a.DirectStats())
	if fb := direct.d.DirectStats().Fallbacks + direct.a.DirectStats().Fallbacks; fb > 0 {
		b.Errorf("the direct connection fell back to the relay %d times under load", fb)
	}
}

// timedTransfer sends size bytes from c to s on a new stream and returns
// the time until s has read them all.
func timedTransfer(ctx context.Context, c, s *quic.Conn, size int) (time.Duration, error) {
	got := make(chan error, 1)
	var end time.Time
	go func() {
		st, err := s.AcceptStream(ctx)
		if err != nil {
			got <- err
			return
		}
		n, err := io.Copy(io.Discard, st)
		end = time.Now()
		if err == nil && n != int64(size) {
			err = fmt.Errorf("received %d of %d bytes", n, size)
		}
		st.Close()
		got <- err
	}()
	start := time.Now()
	st, err := c.OpenStreamSync(ctx)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 64<<10)
	for sent := 0; sent < size; {
		n, err := st.Write(buf[:min(len(buf), size-sent)])
		if err != nil {
			return 0, err
		}
		sent += n
	}
	st.Close()
	if err := <-got; err != nil {
		return 0, err
	}
	io.Copy(io.Discard, st)
	return end.Sub(start), nil
}

// benchLab is the NAT lab with port-preserving NATs, a port forward to B
// for the plain connection, and the relay in its own process.
type benchLab struct {
	*natLab
	relayAddr string
	relayPID  int
}

const plainPort = 4433

func newBenchLab(b *testing.B, uplink netlab.Shape) *benchLab {
	nl := &natLab{lab: netlab.New(b), relayID: GenerateIdentity(), aID: GenerateIdentity(), bID: GenerateIdentity()}
	buildNATNetwork(nl, natEIM, natEIM, false, uplink)
	nl.natB.Nft(fmt.Sprintf(`table ip forward {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "wan0" udp dport %d dnat to 10.2.0.2
	}
}
`, plainPort))
	l := &benchLab{natLab: nl}
	l.startRelayProcess(b)
	return l
}

// startRelayProcess runs the relay in the relay namespace as a child
// process (this test binary, TestLabRelayProcess).
func (l *benchLab) startRelayProcess(b *testing.B) {
	cmd := exec.Command("ip", "netns", "exec", l.relayNS.Name, os.Args[0], "-test.run=^TestLabRelayProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "QUICPIPE_LAB_RELAY="+hex.EncodeToString(l.relayID.Seed()))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "RELAY "); ok {
			l.relayAddr = a
			break
		}
	}
	if l.relayAddr == "" {
		b.Fatal("the relay process did not start")
	}
	go io.Copy(io.Discard, stdout)
	l.relayPID = cmd.Process.Pid // ip netns exec execs the binary in place
}

// relayCPU returns the CPU time the relay process used so far.
func (l *benchLab) relayCPU(b *testing.B) time.Duration {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", l.relayPID))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64) // utime, field 14
	stt, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+stt) * time.Second / 100 // USER_HZ
}

// TestLabRelayProcess is the relay process of BenchmarkPathThroughput, not
// a test: it serves until its standard input closes.
func TestLabRelayProcess(t *testing.T) {
	seed := os.Getenv("QUICPIPE_LAB_RELAY")
	if seed == "" {
		t.Skip("the relay process of BenchmarkPathThroughput")
	}
	k, err := hex.DecodeString(seed)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ListenRelay("192.0.2.2:0", &RelayConfig{
		Identity: ed25519.NewKeyFromSeed(k),
		// Measure forwarding, not the per-registration rate caps.
		MaxPacketsPerSecond: -1, MaxBytesPerSecond: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("RELAY %s\n", r.LocalAddr())
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	if err := r.Serve(ctx); err != nil {
		t.Fatal(err)
	}
}

// plainPair connects a plain quic-go client in A's namespace to a plain
// quic-go server in B's, through B's port forward.
func plainPair(b *testing.B, ctx context.Context, l *benchLab, qconf *quic.Config) (client, server *quic.Conn) {
	sconn, err := l.peerB.ListenUDP("udp4", fmt.Sprintf("0.0.0.0:%d", plainPort))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sconn.Close() })
	cconn := l.peerSocket(b, l.peerA)
	stls, err := ServerTLSConfig(l.bID, []ed25519.PublicKey{l.aID.Public().(ed25519.PublicKey)}, PeerALPN)
	if err != nil {
		b.Fatal(err)
	}
	ctls, err := ClientTLSConfig(l.aID, l.bID.Public().(ed25519.PublicKey), PeerALPN)
	if err != nil {
		b.Fatal(err)
	}
	str := &quic.Transport{Conn: sconn}
	ctr := &quic.Transport{Conn: cconn}
	b.Cleanup(func() { ctr.Close(); str.Close() })
	ln, err := str.Listen(stls, qconf)
	if err != nil {
		b.Fatal(err)
	}
	acc := make(chan *quic.Conn, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err == nil {
			acc <- c
		}
	}()
	client, err = ctr.Dial(ctx, &net.UDPAddr{IP: l.wanB.AsSlice(), Port: plainPort}, ctls, qconf)
	if err != nil {
		b.Fatal(err)
	}
	select {
	case server = <-acc:
	case <-ctx.Done():
		b.Fatal(ctx.Err())
	}
	return client, server
}

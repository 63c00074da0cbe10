package quicpipe

// A bounded attack harness against a relay in a child process on loopback,
// for figures before and after the connection, stream and handshake limits.
// It runs only when QUICPIPE_DOS names an attack:
//
//	QUICPIPE_DOS=conns      go test -run '^TestDoSHarness$' -v -count=1 .
//	QUICPIPE_DOS=streams    go test -run '^TestDoSHarness$' -v -count=1 .
//	QUICPIPE_DOS=handshakes go test -run '^TestDoSHarness$' -v -count=1 .
//
// QUICPIPE_DOS_N sets the number of connections (conns, default 2000),
// connections of 100 streams (streams, default 20) or ClientHellos
// (handshakes, default 5000). The relay runs with the default RelayConfig;
// it reports its goroutines, live heap and RSS after a garbage collection.

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/quicpipe/quicpipe/internal/wire"
)

// dosRelay is the relay process under attack.
type dosRelay struct {
	addr  *net.UDPAddr
	key   ed25519.PublicKey
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func startDoSRelay(t *testing.T) *dosRelay {
	id := GenerateIdentity()
	cmd := exec.Command(os.Args[0], "-test.run=^TestDoSRelayProcess$")
	cmd.Env = append(os.Environ(), "QUICPIPE_DOS_RELAY="+hex.EncodeToString(id.Seed()))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	r := &dosRelay{key: id.Public().(ed25519.PublicKey), stdin: stdin, out: bufio.NewScanner(stdout)}
	for r.out.Scan() {
		if a, ok := strings.CutPrefix(r.out.Text(), "RELAY "); ok {
			ua, err := net.ResolveUDPAddr("udp", a)
			if err != nil {
				t.Fatal(err)
			}
			r.addr = ua
			return r
		}
	}
	t.Fatal("the relay process did not start")
	return nil
}

// stats asks the relay process for its goroutines, heap in use and RSS.
func (r *dosRelay) stats(t *testing.T) string {
	fmt.Fprintln(r.stdin, "stats")
	for r.out.Scan() {
		if s, ok := strings.CutPrefix(r.out.Text(), "STATS "); ok {
			return s
		}
	}
	t.Fatal("the relay process ended")
	return ""
}

// TestDoSRelayProcess is the relay process of TestDoSHarness, not a test.
func TestDoSRelayProcess(t *testing.T) {
	seed := os.Getenv("QUICPIPE_DOS_RELAY")
	if seed == "" {
		t.Skip("the relay process of TestDoSHarness")
	}
	k, err := hex.DecodeString(seed)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ListenRelay("127.0.0.1:0", &RelayConfig{Identity: ed25519.NewKeyFromSeed(k)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx) }()
	fmt.Printf("RELAY %s\n", r.LocalAddr())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		rss := "?"
		if b, err := os.ReadFile("/proc/self/status"); err == nil {
			for l := range strings.Lines(string(b)) {
				if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
					rss = strings.TrimSpace(v)
				}
			}
		}
		fmt.Printf("STATS goroutines=%d heap_inuse=%.1fMB rss=%s\n", runtime.NumGoroutine(), float64(ms.HeapInuse)/1e6, rss)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

func TestDoSHarness(t *testing.T) {
	mode := os.Getenv("QUICPIPE_DOS")
	if mode == "" {
		t.Skip("set QUICPIPE_DOS=conns, streams or handshakes to run the attack harness")
	}
	r := startDoSRelay(t)
	t.Logf("relay idle: %s", r.stats(t))
	switch mode {
	case "conns":
		dosConns(t, r, envInt("QUICPIPE_DOS_N", 2000))
	case "streams":
		dosStreams(t, r, envInt("QUICPIPE_DOS_N", 20), 100)
	case "handshakes":
		dosHandshakes(t, r, envInt("QUICPIPE_DOS_N", 5000))
	default:
		t.Fatalf("unknown attack %q", mode)
	}
}

// dosDial opens up to n QUIC connections (HTTP/3 ALPN) to the relay from
// one socket on 127.0.0.1, 32 at a time, and returns those that connected.
func dosDial(t *testing.T, r *dosRelay, n int) []*quic.Conn {
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	t.Cleanup(func() { tr.Close(); udp.Close() })
	tlsConf, err := ClientTLSConfig(nil, r.key, http3.NextProtoH3)
	if err != nil {
		t.Fatal(err)
	}
	qconf := &quic.Config{HandshakeIdleTimeout: 3 * time.Second, MaxIdleTimeout: 30 * time.Second, KeepAlivePeriod: 2 * time.Second}
	var (
		mu    sync.Mutex
		conns []*quic.Conn
		fails atomic.Int64
		wg    sync.WaitGroup
	)
	sem := make(chan struct{}, 32)
	start := time.Now()
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			qc, err := tr.Dial(ctx, r.addr, tlsConf, qconf)
			if err != nil {
				fails.Add(1)
				return
			}
			mu.Lock()
			conns = append(conns, qc)
			mu.Unlock()
		})
	}
	wg.Wait()
	t.Logf("dialed %d connections in %v: %d connected, %d failed", n, time.Since(start).Round(time.Millisecond), len(conns), fails.Load())
	return conns
}

func alive(conns []*quic.Conn) int {
	n := 0
	for _, c := range conns {
		if c.Context().Err() == nil {
			n++
		}
	}
	return n
}

func dosConns(t *testing.T, r *dosRelay, n int) {
	conns := dosDial(t, r, n)
	t.Logf("after dialing: %d open; relay %s", alive(conns), r.stats(t))
	time.Sleep(25 * time.Second)
	t.Logf("25 s later (keep-alives every 2 s): %d open; relay %s", alive(conns), r.stats(t))
}

// dosStreams opens conns connections and on each up to streams request
// streams that send 5 bytes of a HEADERS frame announcing 100 bytes.
func dosStreams(t *testing.T, r *dosRelay, conns, streams int) {
	cs := dosDial(t, r, conns)
	opened, refused := 0, 0
	for _, c := range cs {
		for range streams {
			s, err := c.OpenStream()
			if err != nil {
				refused++
				continue
			}
			s.Write([]byte{0x01, 0x40, 0x64, 0x00, 0x00})
			opened++
		}
	}
	t.Logf("opened %d incomplete-HEADERS streams (%d refused by the stream limit)", opened, refused)
	time.Sleep(time.Second)
	t.Logf("1 s later: %d connections open; relay %s", alive(cs), r.stats(t))
	time.Sleep(11 * time.Second)
	t.Logf("12 s later: %d connections open; relay %s", alive(cs), r.stats(t))
}

// dosHandshakes sends n ClientHellos with distinct connection IDs from 200
// loopback addresses and never answers.
func dosHandshakes(t *testing.T, r *dosRelay, n int) {
	flight := quicGoFlight(t, http3.NextProtoH3, 8, nil)
	hello := clientHelloOf(t, flight)
	// The ClientHello's transport parameters name the client's source
	// CID: keep it, or the relay closes each connection at once.
	info, err := wire.InspectClientInitials(flight.Datagrams)
	if err != nil {
		t.Fatal(err)
	}
	scid := info.SCID
	var socks []*net.UDPConn
	var retries atomic.Int64
	for i := range 200 {
		u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 1, byte(i+1))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Close() })
		socks = append(socks, u)
		go func() {
			b := make([]byte, 2048)
			for {
				n, _, err := u.ReadFromUDP(b)
				if err != nil {
					return
				}
				// Long header, version 1, type Retry (3).
				if n > 5 && b[0]&0xf0 == 0xf0 && string(b[1:5]) == "\x00\x00\x00\x01" {
					retries.Add(1)
				}
			}
		}()
	}
	start := time.Now()
	for i := range n {
		dcid := make([]byte, 8)
		rand.Read(dcid)
		for _, d := range sealFlight(t, dcid, scid, hello, 1252).Datagrams {
			socks[i%len(socks)].WriteToUDP(d, r.addr)
		}
		if i%200 == 199 {
			time.Sleep(time.Millisecond) // stay below the socket buffers
		}
	}
	t.Logf("sent %d ClientHellos from %d addresses in %v", n, len(socks), time.Since(start).Round(time.Millisecond))
	time.Sleep(time.Second)
	t.Logf("1 s later: relay %s; Retry packets received: %d", r.stats(t), retries.Load())
	time.Sleep(11 * time.Second)
	t.Logf("12 s later: relay %s", r.stats(t))
}

package quicpipe

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// pathWatch records the path changes of one peer's connections.
type pathWatch struct {
	mu     sync.Mutex
	events []PathInfo
	signal chan struct{}
}

func newPathWatch() *pathWatch { return &pathWatch{signal: make(chan struct{}, 1)} }

func (w *pathWatch) record(_ *quic.Conn, p PathInfo) {
	w.mu.Lock()
	w.events = append(w.events, p)
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
	}
}

// wait waits until the latest event satisfies ok, and returns it.
func (w *pathWatch) wait(ctx context.Context, ok func(PathInfo) bool) (PathInfo, error) {
	for {
		w.mu.Lock()
		var last PathInfo
		n := len(w.events)
		if n > 0 {
			last = w.events[n-1]
		}
		w.mu.Unlock()
		if n > 0 && ok(last) {
			return last, nil
		}
		select {
		case <-w.signal:
		case <-ctx.Done():
			return last, fmt.Errorf("waiting for a path change (last %+v after %d changes): %w", last, n, ctx.Err())
		}
	}
}

func isDirect(p PathInfo) bool { return p.Kind == PathDirect }

// directPeers are a Dialer and an Accepter with direct paths on, and one
// connection between them.
type directPeers struct {
	d           *Dialer
	a           *Accepter
	dc, ac      *quic.Conn
	dw, aw      *pathWatch
	established time.Time
}

// dialDirect connects a new Dialer and Accepter with direct paths on.
// dcfg and acfg (either may be nil) complete their configurations. The
// first flight reaches the accepter flightDelay after the dialer hands it
// over.
func dialDirect(t testing.TB, ctx context.Context, relayAddr string, relayID, aID, bID ed25519.PrivateKey, dcfg, acfg *Config, flightDelay time.Duration) *directPeers {
	t.Helper()
	return dialDirectTimed(t, ctx, relayAddr, relayID, aID, bID, dcfg, acfg, flightDelay, nil)
}

// dialDirectTimed is dialDirect with both peers' direct-path timers
// replaced by timing, if not nil. A configuration with a Conn opened in
// another network namespace lists that namespace's interfaces.
func dialDirectTimed(t testing.TB, ctx context.Context, relayAddr string, relayID, aID, bID ed25519.PrivateKey, dcfg, acfg *Config,
	flightDelay time.Duration, timing *directTiming) *directPeers {
	t.Helper()
	p := &directPeers{dw: newPathWatch(), aw: newPathWatch()}
	base := func(c *Config, id ed25519.PrivateKey, w *pathWatch) *Config {
		var out Config
		if c != nil {
			out = *c
		}
		out.RelayAddr = relayAddr
		out.RelayKey = relayID.Public().(ed25519.PublicKey)
		out.Identity = id
		out.OnPathChange = w.record
		if out.Logger == nil {
			out.Logger = testLogger(t)
		}
		if out.Conn != nil && out.InterfaceAddrs == nil {
			out.InterfaceAddrs = socketInterfaceAddrs(out.Conn)
		}
		return &out
	}
	ac := base(acfg, bID, p.aw)
	ac.TrustedPeers = []ed25519.PublicKey{aID.Public().(ed25519.PublicKey)}
	d, a := newEndpointsWith(t, ctx, ac, base(dcfg, aID, p.dw), peerOptions{directTiming: timing})
	dc, accepted := dialAccept(t, ctx, d, a, bID.Public().(ed25519.PublicKey), nil, flightDelay)
	p.established = time.Now()
	p.ac = accepted
	p.d, p.a, p.dc = d, a, dc
	return p
}

// waitDirect waits until both sides use a direct path and returns the
// dialer's.
func (p *directPeers) waitDirect(t testing.TB, ctx context.Context) PathInfo {
	t.Helper()
	dp, err := p.dw.wait(ctx, isDirect)
	if err != nil {
		t.Fatalf("dialer: %v (stats %+v)", err, p.d.DirectStats())
	}
	if _, err := p.aw.wait(ctx, isDirect); err != nil {
		t.Fatalf("accepter: %v (stats %+v)", err, p.a.DirectStats())
	}
	return dp
}

// transfer sends size bytes from the dialer to the accepter on a new
// stream and checks their SHA-256 on arrival. during, if not nil, runs
// once the first half is on its way.
func transfer(ctx context.Context, dc, ac *quic.Conn, size int, during func()) error {
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i*131 + i>>11)
	}
	want := sha256.Sum256(payload)
	got := make(chan error, 1)
	go func() {
		s, err := ac.AcceptStream(ctx)
		if err != nil {
			got <- err
			return
		}
		h := sha256.New()
		n, err := io.Copy(h, s)
		if err != nil {
			got <- err
			return
		}
		if n != int64(size) || [32]byte(h.Sum(nil)) != want {
			got <- fmt.Errorf("received %d of %d bytes, SHA-256 match %v", n, size, [32]byte(h.Sum(nil)) == want)
			return
		}
		s.Write([]byte{1}) // receipt
		s.Close()
		got <- nil
	}()
	s, err := dc.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	half := size / 2
	if _, err := s.Write(payload[:half]); err != nil {
		return err
	}
	if during != nil {
		during()
	}
	if _, err := s.Write(payload[half:]); err != nil {
		return err
	}
	s.Close()
	if err := <-got; err != nil {
		return err
	}
	var receipt [1]byte
	if _, err := io.ReadFull(s, receipt[:]); err != nil {
		return fmt.Errorf("receipt: %w", err)
	}
	return nil
}

// TestDirectLoopback connects two peers on this host through a relay on
// loopback: the relay-observed address is a working direct path, and the
// connection must move onto it and carry a transfer without the relay.
func TestDirectLoopback(t *testing.T) {
	for _, tc := range []struct{ name, listen string }{
		{"ipv4", "127.0.0.1:0"},
		{"ipv6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			e := newTestEnv(t, tc.listen, nil)
			p := dialDirect(t, ctx, e.relay.LocalAddr().String(), e.relayID, e.aID, e.bID, nil, nil, 0)
			dp := p.waitDirect(t, ctx)
			t.Logf("direct after %v: %+v", time.Since(p.established).Round(time.Millisecond), dp)
			if want := netAddrPort(p.a.Registration().Observed); dp.Remote != want {
				t.Errorf("dialer's direct path goes to %v, want the accepter's address %v", dp.Remote, want)
			}
			if info, ok := p.d.Path(p.dc); !ok || info.Kind != PathDirect {
				t.Errorf("Dialer.Path = %+v, %v; want direct", info, ok)
			}
			before := e.relay.Stats().Forwarded
			const size = 4 << 20
			if err := transfer(ctx, p.dc, p.ac, size, nil); err != nil {
				t.Fatal(err)
			}
			if fwd := e.relay.Stats().Forwarded - before; fwd > 100 {
				t.Errorf("the relay forwarded %d datagrams during a direct transfer", fwd)
			}
			// The application never sees the path machinery: no stream
			// or datagram of ours reaches it.
			actx, acancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer acancel()
			if s, err := p.ac.AcceptStream(actx); err == nil {
				t.Errorf("unexpected stream %d", s.StreamID())
			}
			ds, as := p.d.DirectStats(), p.a.DirectStats()
			t.Logf("dialer %+v; accepter %+v", ds, as)
			if ds.PunchSuccesses < 1 || as.PunchSuccesses < 1 || ds.Fallbacks != 0 {
				t.Errorf("stats: dialer %+v, accepter %+v", ds, as)
			}
			if ra := p.dc.RemoteAddr().(*net.UDPAddr).AddrPort(); netAddrPort(ra) != netAddrPort(e.relay.udpAddr().AddrPort()) {
				t.Errorf("quic-go's remote address is %v, want the relay's", ra)
			}
		})
	}
}

// TestDirectDisabled checks that DisableDirect keeps a connection on the
// relay and sends no control datagrams.
func TestDirectDisabled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	off := &Config{DisableDirect: true}
	p := dialDirect(t, ctx, e.relay.LocalAddr().String(), e.relayID, e.aID, e.bID, off, off, 0)
	if err := transfer(ctx, p.dc, p.ac, 1<<20, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.d.Path(p.dc); ok {
		t.Error("Dialer.Path reports a managed path with direct paths off")
	}
	if st := p.d.DirectStats(); st != (DirectStats{}) {
		t.Errorf("stats with direct paths off: %+v", st)
	}
	if fwd := e.relay.Stats().Forwarded; fwd < (1<<20)/1300 {
		t.Errorf("the relay forwarded only %d datagrams", fwd)
	}
}

// dialOneSideDisabled connects a dialer with direct paths on (fast punch
// rounds) to an accepter with them off.
func dialOneSideDisabled(t *testing.T, ctx context.Context) *directPeers {
	t.Helper()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	fast := defaultDirectTiming
	fast.pingsPerCand, fast.retryMin = 4, 200*time.Millisecond
	p := dialDirectTimed(t, ctx, e.relay.LocalAddr().String(), e.relayID, e.aID, e.bID,
		nil, &Config{DisableDirect: true}, 0, &fast)
	return p
}

// TestDirectOneSideDisabled: a peer with direct paths on facing one with
// them off stays relayed and keeps working.
func TestDirectOneSideDisabled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p := dialOneSideDisabled(t, ctx)
	for p.d.DirectStats().PunchAttempts < 2 && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	if err := transfer(ctx, p.dc, p.ac, 1<<20, nil); err != nil {
		t.Fatal(err)
	}
	// PathRelayed is the zero Kind: ok tells a relayed path from none.
	if info, ok := p.d.Path(p.dc); !ok || info.Kind != PathRelayed {
		t.Errorf("Dialer.Path = %+v, %v; want relayed", info, ok)
	}
	if st := p.d.DirectStats(); st.PunchAttempts < 2 || st.PunchSuccesses != 0 {
		t.Errorf("stats %+v: want retried rounds and no success", st)
	}
}

package quicpipe

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe/internal/forward"
)

func TestEndToEndDatagrams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	a, err := NewAccepter(ctx, withQUIC(e.config(e.bID, e.aID)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	accepted := make(chan *quic.Conn, 1)
	conn, err := Dial(ctx, withQUIC(e.config(e.aID)), e.bID.Public().(ed25519.PublicKey),
		func(ctx context.Context, f *FirstFlight) error {
			go func() {
				c, err := a.Accept(ctx, f)
				if err != nil {
					t.Error(err)
					close(accepted)
					return
				}
				accepted <- c
			}()
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	ac := <-accepted
	if ac == nil {
		t.FailNow()
	}
	if !conn.ConnectionState().SupportsDatagrams.Remote || !ac.ConnectionState().SupportsDatagrams.Remote {
		t.Fatal("datagrams not negotiated")
	}
	// Datagrams are unreliable: send until one of each direction arrives.
	for _, dir := range []struct {
		name     string
		from, to *quic.Conn
	}{{"dialer to accepter", conn, ac}, {"accepter to dialer", ac, conn}} {
		got := make(chan []byte, 1)
		go func() {
			b, err := dir.to.ReceiveDatagram(ctx)
			if err == nil {
				got <- b
			}
		}()
		msg := []byte("datagram " + dir.name)
		tick := time.NewTicker(50 * time.Millisecond)
	loop:
		for {
			if err := dir.from.SendDatagram(msg); err != nil {
				t.Fatal(err)
			}
			select {
			case b := <-got:
				if !bytes.Equal(b, msg) {
					t.Fatalf("%s: got %q, want %q", dir.name, b, msg)
				}
				break loop
			case <-tick.C:
			case <-ctx.Done():
				t.Fatalf("%s: no datagram arrived", dir.name)
			}
		}
		tick.Stop()
	}
	// The pinned keys are what each side sees.
	if got := PeerKey(ac.ConnectionState().TLS); !bytes.Equal(got, e.aID.Public().(ed25519.PublicKey)) {
		t.Fatalf("accepter sees dialer key %x", got)
	}
	if got := PeerKey(conn.ConnectionState().TLS); !bytes.Equal(got, e.bID.Public().(ed25519.PublicKey)) {
		t.Fatalf("dialer sees accepter key %x", got)
	}
}

func withQUIC(c *Config) *Config {
	c.QUICConfig = &quic.Config{EnableDatagrams: true}
	return c
}

// TestConcurrentPipes runs ten dialers against one accepter through one
// relay, each echoing 1 MB at the same time.
func TestConcurrentPipes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	const pipes = 10
	dialers := make([]ed25519.PrivateKey, pipes)
	trusted := make([]ed25519.PrivateKey, pipes)
	for i := range dialers {
		dialers[i] = GenerateIdentity()
		trusted[i] = dialers[i]
	}
	a, err := NewAccepter(ctx, e.config(e.bID, trusted...))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var wg sync.WaitGroup
	for i := range pipes {
		wg.Go(func() {
			var ac *quic.Conn
			var accErr error
			accDone := make(chan struct{})
			conn, err := Dial(ctx, e.config(dialers[i]), e.bID.Public().(ed25519.PublicKey),
				func(ctx context.Context, f *FirstFlight) error {
					b, err := f.MarshalBinary()
					if err != nil {
						return err
					}
					go func() {
						defer close(accDone)
						g, err := ParseFirstFlight(b)
						if err != nil {
							accErr = err
							return
						}
						ac, accErr = a.Accept(ctx, g)
					}()
					return nil
				})
			if err != nil {
				t.Errorf("pipe %d: dial: %v", i, err)
				return
			}
			defer conn.CloseWithError(0, "")
			<-accDone
			if accErr != nil {
				t.Errorf("pipe %d: accept: %v", i, accErr)
				return
			}
			go func() {
				s, err := ac.AcceptStream(ctx)
				if err != nil {
					return
				}
				io.Copy(s, s)
				s.Close()
			}()
			if err := echo(ctx, conn, 1<<20, byte(i)); err != nil {
				t.Errorf("pipe %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if st := e.relay.Stats(); st.ForwardedBytes < 2*pipes<<20 {
		t.Errorf("relay forwarded %d bytes, want at least %d", st.ForwardedBytes, 2*pipes<<20)
	}
}

// TestReRegistrationAfterDrop closes a peer's HTTP/3 connection to the relay.
// The peer reconnects from the same socket with a source CID from its
// registered sequence; the relay must serve that Initial (ALPN h3), not drop
// it as a peer first flight, and the pipe must keep working.
func TestReRegistrationAfterDrop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	dc, ac, d, _ := e.pipe(t, ctx, false)
	go func() {
		s, err := ac.AcceptStream(ctx)
		if err != nil {
			return
		}
		io.Copy(s, s)
		s.Close()
	}()
	before := e.relay.Stats()
	d.p.sess.regMu.Lock()
	d.p.sess.qc.CloseWithError(0, "test: drop the relay connection")
	d.p.sess.regMu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for e.relay.Stats().Handshakes == before.Handshakes || e.relay.Stats().Registered == before.Registered {
		if time.Now().After(deadline) {
			t.Fatalf("peer did not re-register: stats %+v", e.relay.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := e.relay.Stats().Dropped["peer_initial"]; n != 0 {
		t.Fatalf("relay dropped %d Initials of the re-registration as peer first flights", n)
	}
	if err := echo(ctx, dc, 1<<20, 1); err != nil {
		t.Fatalf("pipe after re-registration: %v", err)
	}
}

// TestLeakedFirstFlightDropped sends a dialer's first flight straight to the
// relay, as a dialer that failed to hold it back would. The relay must drop
// it and never answer.
func TestLeakedFirstFlightDropped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	d, err := NewDialer(ctx, e.config(e.aID))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// capture starts a dial and returns its first flight; the dial stays
	// in progress until stop is called. (Once a dial has ended, its CIDs
	// may leave the registration window, and the relay's server may then
	// refuse a replayed flight with a CONNECTION_CLOSE of 57 bytes: no
	// amplification, and nobody waits for that dial any more.)
	capture := func() (f *FirstFlight, stop func()) {
		flight := make(chan *FirstFlight, 1)
		dctx, dcancel := context.WithCancel(ctx)
		go d.Dial(dctx, e.bID.Public().(ed25519.PublicKey), func(_ context.Context, f *FirstFlight) error {
			flight <- f
			return nil
		})
		select {
		case f := <-flight:
			return f, dcancel
		case <-ctx.Done():
			dcancel()
			t.Fatal("no first flight")
			return nil, nil
		}
	}
	// quic-go picks a random DCID of 8 to 20 bytes for its first Initial;
	// one of 12 bytes with the high bit set looks like a relay CID (of
	// another run: the epoch differs) and must be filtered all the same.
	lookalike := func(f *FirstFlight) bool {
		info, err := f.check()
		return err == nil && len(info.ODCID) == CIDLen && forward.IsRelayCID(info.ODCID)
	}
	first, stop := capture()
	defer stop()
	flights := []*FirstFlight{first}
	for i := 0; !lookalike(flights[len(flights)-1]); i++ {
		if i == 1000 {
			t.Fatal("no first flight with a relay-like DCID in 1000 dials")
		}
		f, stop := capture()
		if !lookalike(f) {
			stop()
			continue
		}
		defer stop()
		flights = append(flights, f)
	}
	probe, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	var sent uint64
	for _, f := range flights {
		for _, dg := range f.Datagrams {
			if _, err := probe.WriteToUDP(dg, e.relay.udpAddr()); err != nil {
				t.Fatal(err)
			}
			sent++
		}
	}
	probe.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
	if n, _, err := probe.ReadFromUDP(make([]byte, 2000)); err == nil {
		t.Fatalf("relay answered a peer first flight with %d bytes", n)
	}
	if n := e.relay.Stats().Dropped["peer_initial"]; n != sent {
		t.Fatalf("peer_initial drops = %d, want %d", n, sent)
	}
}

// TestSlowAccepter delivers the first flight after quic-go's default 5 s
// handshake idle timeout has passed: the dialer must still be waiting.
func TestSlowAccepter(t *testing.T) {
	if testing.Short() {
		t.Skip("waits 6 s")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	a, err := NewAccepter(ctx, e.config(e.bID, e.aID))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	accepted := make(chan error, 1)
	start := time.Now()
	conn, err := Dial(ctx, e.config(e.aID), e.bID.Public().(ed25519.PublicKey),
		func(ctx context.Context, f *FirstFlight) error {
			line := f.String()
			go func() {
				time.Sleep(6 * time.Second) // a person copying the line
				g, err := ParseFirstFlight([]byte(line))
				if err == nil {
					_, err = a.Accept(ctx, g)
				}
				accepted <- err
			}()
			return nil
		})
	if err != nil {
		t.Fatalf("dial after %v: %v", time.Since(start), err)
	}
	defer conn.CloseWithError(0, "")
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 6*time.Second {
		t.Fatalf("handshake completed after %v, before the flight was delivered", d)
	}
}

// TestDialCanceled checks that canceling the Dial context while waiting for
// the accepter returns promptly with the context's error.
func TestDialCanceled(t *testing.T) {
	e := newTestEnv(t, "127.0.0.1:0", nil)
	d, err := NewDialer(context.Background(), e.config(e.aID))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = d.Dial(ctx, e.bID.Public().(ed25519.PublicKey), func(context.Context, *FirstFlight) error { return nil })
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial = %v, want a context deadline error", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Dial returned after %v", d)
	}
}

// echoPipe dials from d to a through the relay, makes the accepted side echo
// every stream, and checks 64 KiB through it.
func echoPipe(t *testing.T, ctx context.Context, e *testEnv, d *Dialer, a *Accepter, i int) (dialed, accepted *quic.Conn) {
	t.Helper()
	dc, ac := dialAccept(t, ctx, d, a, e.bID.Public().(ed25519.PublicKey), nil, 0)
	serveEcho(ctx, ac)
	if err := echo(ctx, dc, 64<<10, byte(i)); err != nil {
		t.Fatalf("dial %d: %v", i, err)
	}
	return dc, ac
}

// TestRegistrationKeepsAhead serves many dials from one accepter with a tiny
// registration window: every CID quic-go issues must be registered before
// the other side can use it.
func TestRegistrationKeepsAhead(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	acfg := e.config(e.bID, e.aID)
	acfg.RegistrationWindow = 8
	d, a := newEndpoints(t, ctx, acfg, e.config(e.aID))
	var live []*quic.Conn // kept open, so that the window cannot slide
	for i := range 12 {
		dc, _ := echoPipe(t, ctx, e, d, a, i)
		live = append(live, dc)
	}
	reg := a.Registration()
	if issued := a.p.gen.Issued(); reg.First+reg.Num-1 < issued {
		t.Fatalf("registered up to CID %d, but %d were issued", reg.First+reg.Num-1, issued)
	}
	if reg.Num <= 8 {
		t.Fatalf("registration window never grew: %+v", reg)
	}
	for _, c := range live {
		c.CloseWithError(0, "")
	}
}

// TestRegistrationSlides dials far more pipes, one after another, than the
// relay's per-registration limit could hold if windows only grew: the
// window's start follows the oldest live connection. A connection that
// stays open pins it, and keeps working through the relay while others
// come and go.
func TestRegistrationSlides(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const limit = 64
	const ttl = 2 * time.Second
	e := newTestEnv(t, "127.0.0.1:0", &RelayConfig{MaxCIDsPerRegistration: limit, RegistrationTTL: ttl})
	acfg := e.config(e.bID, e.aID)
	acfg.RegistrationWindow = 8
	dcfg := e.config(e.aID)
	dcfg.RegistrationWindow = 8
	d, a := newEndpoints(t, ctx, acfg, dcfg)
	// Pins end with their connections here (TestRegistrationLingers covers
	// the delay), so that the window follows at once.
	a.p.gen.setLinger(0)
	d.p.gen.setLinger(0)

	// A long-lived pipe, then a few short ones: the window may not pass
	// the long-lived pipe's CIDs.
	pinnedAt := a.p.gen.Issued() + 1
	long, _ := echoPipe(t, ctx, e, d, a, 0)
	for i := 1; i <= 4; i++ {
		dc, _ := echoPipe(t, ctx, e, d, a, i)
		dc.CloseWithError(0, "")
	}
	if reg := a.Registration(); reg.First > pinnedAt {
		t.Fatalf("window %+v passed index %d of a live connection", reg, pinnedAt)
	}
	if err := echo(ctx, long, 64<<10, 0xee); err != nil {
		t.Fatalf("long-lived pipe: %v", err)
	}
	long.CloseWithError(0, "")

	// Then many more short pipes than the limit allows without sliding.
	n := 0
	for i := 5; a.p.gen.Issued() < 4*limit || d.p.gen.Issued() < 4*limit; i++ {
		dc, _ := echoPipe(t, ctx, e, d, a, i)
		dc.CloseWithError(0, "")
		n++
	}
	for _, p := range []*peer{a.p, d.p} {
		reg := p.sess.registration()
		if reg.First <= pinnedAt || reg.Num > limit || reg.First+reg.Num-1 < p.gen.Issued() {
			t.Errorf("after %d more pipes, %d CIDs issued: registration %+v", n, p.gen.Issued(), reg)
		}
	}
	t.Logf("%d pipes; accepter issued %d CIDs, registration %+v", n+5, a.p.gen.Issued(), a.Registration())

	// A pipe kept open while more than the limit's worth of CIDs are issued
	// pins the window: registrations then fail, on whichever side reaches
	// the limit first, with an error that says why, and the pipe that pins
	// the window stays registered and keeps working after the TTL.
	keep, _ := echoPipe(t, ctx, e, d, a, 1000)
	defer keep.CloseWithError(0, "")
	var refusal error
	for i := 0; refusal == nil && i < 100; i++ {
		accErr := make(chan error, 1)
		delivered := false
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		dc, err := d.Dial(dctx, e.bID.Public().(ed25519.PublicKey), func(_ context.Context, f *FirstFlight) error {
			delivered = true
			go func() {
				actx, acancel := context.WithTimeout(ctx, 5*time.Second)
				defer acancel()
				c, err := a.Accept(actx, f)
				if err == nil {
					c.CloseWithError(0, "")
				}
				accErr <- err
			}()
			return nil
		})
		dcancel()
		if err == nil {
			dc.CloseWithError(0, "")
		}
		errs := []error{err}
		if delivered {
			errs = append(errs, <-accErr)
		}
		var re *RelayError
		for _, err := range errs {
			if errors.As(err, &re) && re.Code == "num_range" {
				refusal = err
			}
		}
	}
	if refusal == nil || !strings.Contains(refusal.Error(), "oldest live connection") {
		t.Fatalf("dialing beside a pinned window: %v, want a num_range refusal that explains it", refusal)
	}
	t.Log(refusal)
	time.Sleep(ttl + ttl/2)
	if st := e.relay.Stats(); st.Registrations != 2 || st.Expired != 0 {
		t.Errorf("after the TTL the relay holds %d registrations and expired %d, want 2 and 0", st.Registrations, st.Expired)
	}
	if err := echo(ctx, keep, 64<<10, 0xaa); err != nil {
		t.Fatalf("the pipe that pins the window, after the TTL: %v", err)
	}
}

// TestRegistrationLingers checks that a closed connection's CIDs stay
// registered for a while, then leave the window.
func TestRegistrationLingers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := newTestEnv(t, "127.0.0.1:0", nil)
	d, a := e.endpoints(t, ctx)
	const linger = 500 * time.Millisecond
	a.p.gen.setLinger(linger)
	pinnedAt := a.p.gen.Issued() + 1
	dc, ac := echoPipe(t, ctx, e, d, a, 0)
	dc.CloseWithError(0, "")
	select {
	case <-ac.Context().Done():
	case <-ctx.Done():
		t.Fatal("the accepted connection did not see the close")
	}
	closed := time.Now()
	if err := a.p.sess.register(ctx); err != nil {
		t.Fatal(err)
	}
	if reg := a.Registration(); reg.First > pinnedAt && time.Since(closed) < linger {
		t.Fatalf("window %+v dropped index %d right after its connection closed", reg, pinnedAt)
	}
	time.Sleep(time.Until(closed.Add(linger + 200*time.Millisecond)))
	if err := a.p.sess.register(ctx); err != nil {
		t.Fatal(err)
	}
	if reg := a.Registration(); reg.First <= pinnedAt {
		t.Fatalf("window %+v still holds index %d %v after its connection closed", reg, pinnedAt, time.Since(closed).Round(time.Millisecond))
	}
}

// TestRelayOnCallerSocket builds a relay on a socket the caller owns: Close
// must not close it.
func TestRelayOnCallerSocket(t *testing.T) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r, err := NewRelay(conn, &RelayConfig{Identity: GenerateIdentity()})
	if err != nil {
		t.Fatal(err)
	}
	if r.LocalAddr().String() != conn.LocalAddr().String() {
		t.Fatalf("Addr = %v, want %v", r.LocalAddr(), conn.LocalAddr())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve = %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if _, err := conn.WriteToUDP([]byte("still open"), conn.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Fatalf("caller's socket was closed: %v", err)
	}
}

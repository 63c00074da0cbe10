package quicpipe

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicpipe/quicpipe/internal/netns"
)

// serveRelay runs r.Serve until the test ends. Its cleanup stops the relay,
// fails the test if Serve returned an error, then runs after if not nil.
func serveRelay(t testing.TB, r *Relay, after func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if after != nil {
			after()
		}
	})
}

// newEndpoints makes an Accepter from acfg and a Dialer from dcfg; both
// close when the test ends.
func newEndpoints(t testing.TB, ctx context.Context, acfg, dcfg *Config) (*Dialer, *Accepter) {
	t.Helper()
	return newEndpointsWith(t, ctx, acfg, dcfg, peerOptions{})
}

// newEndpointsWith is newEndpoints with both peers' options (shortened
// direct-path timers).
func newEndpointsWith(t testing.TB, ctx context.Context, acfg, dcfg *Config, opts peerOptions) (*Dialer, *Accepter) {
	t.Helper()
	a, err := newAccepter(ctx, acfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	d, err := newDialer(ctx, dcfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, a
}

// endpoints makes an Accepter for bID that trusts aID and a Dialer for aID;
// both close when the test ends.
func (e *testEnv) endpoints(t testing.TB, ctx context.Context) (*Dialer, *Accepter) {
	t.Helper()
	return newEndpoints(t, ctx, e.config(e.bID, e.aID), e.config(e.aID))
}

// dialResult is what runDial observed.
type dialResult struct {
	flight            *FirstFlight // as captured by the DeliverFunc
	dialed, accepted  *quic.Conn
	dialErr, acceptEr error
}

// runDial dials peer from d and hands the first flight to a.Accept in the
// background, flightDelay after the DeliverFunc got it. The DeliverFunc
// records the flight; prepare, if not nil, turns a copy of it into the
// flight to accept, and its error fails the dial. runDial waits for both
// sides and leaves the checks to the caller.
func runDial(t testing.TB, ctx context.Context, d *Dialer, a *Accepter, peer ed25519.PublicKey,
	prepare func(*FirstFlight) (*FirstFlight, error), flightDelay time.Duration) dialResult {
	t.Helper()
	var res dialResult
	var wg sync.WaitGroup
	deliver := func(ctx context.Context, f *FirstFlight) error {
		res.flight = &FirstFlight{Datagrams: cloneDatagrams(f.Datagrams)}
		g := f
		if prepare != nil {
			var err error
			if g, err = prepare(&FirstFlight{Datagrams: cloneDatagrams(f.Datagrams)}); err != nil {
				return err
			}
		}
		wg.Go(func() {
			time.Sleep(flightDelay)
			res.accepted, res.acceptEr = a.Accept(ctx, g)
		})
		return nil
	}
	res.dialed, res.dialErr = d.Dial(ctx, peer, deliver)
	wg.Wait()
	return res
}

// dialAccept is runDial for a dial that must succeed: it fails the test
// unless both sides connect.
func dialAccept(t testing.TB, ctx context.Context, d *Dialer, a *Accepter, peer ed25519.PublicKey,
	prepare func(*FirstFlight) (*FirstFlight, error), flightDelay time.Duration) (dialed, accepted *quic.Conn) {
	t.Helper()
	res := runDial(t, ctx, d, a, peer, prepare, flightDelay)
	if res.dialErr != nil {
		t.Fatal(res.dialErr)
	}
	if res.acceptEr != nil {
		t.Fatal(res.acceptEr)
	}
	return res.dialed, res.accepted
}

func cloneDatagrams(ds [][]byte) [][]byte {
	out := make([][]byte, len(ds))
	for i, d := range ds {
		out[i] = bytes.Clone(d)
	}
	return out
}

// echo sends size bytes on a new stream of c and checks that the same bytes
// come back (SHA-256); the other side echoes the stream (serveEcho). It
// gives up when ctx ends.
func echo(ctx context.Context, c *quic.Conn, size int, seed byte) error {
	s, err := c.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { s.CancelRead(1); s.CancelWrite(1) })
	defer stop()
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i) ^ seed
	}
	go func() {
		s.Write(payload)
		s.Close()
	}()
	h := sha256.New()
	n, err := io.Copy(h, s)
	if err != nil {
		return fmt.Errorf("echo after %d bytes: %w", n, err)
	}
	if want := sha256.Sum256(payload); n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("echo returned %d bytes with a different SHA-256", n)
	}
	return nil
}

// socketInterfaceAddrs returns, for a socket opened in another network
// namespace (the test labs' peers), a Config.InterfaceAddrs that lists the
// addresses of that namespace; nil for a socket of the caller's namespace.
func socketInterfaceAddrs(conn *net.UDPConn) func() ([]netip.Addr, error) {
	ns, err := netns.Of(conn)
	if err != nil {
		return nil
	}
	cur, err := netns.IsCurrent(ns)
	if err != nil || cur {
		ns.Close()
		return nil
	}
	// The namespace stays open until the test binary exits: a handful per
	// test.
	return func() ([]netip.Addr, error) {
		var addrs []net.Addr
		err := netns.Do(ns, func() error {
			var err error
			addrs, err = net.InterfaceAddrs()
			return err
		})
		if err != nil {
			return nil, err
		}
		var out []netip.Addr
		for _, a := range addrs {
			if p, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(p.IP); ok {
					out = append(out, ip.Unmap())
				}
			}
		}
		return out, nil
	}
}

// serveEcho echoes every stream the connection accepts.
func serveEcho(ctx context.Context, c *quic.Conn) {
	go func() {
		for {
			s, err := c.AcceptStream(ctx)
			if err != nil {
				return
			}
			go func() {
				io.Copy(s, s)
				s.Close()
			}()
		}
	}()
}

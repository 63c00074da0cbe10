package quicpipe

import (
	"context"
	"crypto/ed25519"
	"net"
	"net/netip"
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

// dialAccept dials peer from d and hands the first flight to a.Accept in
// the background, flightDelay after the DeliverFunc got it. prepare, if not
// nil, turns the flight into the one to accept, in the DeliverFunc: its
// error fails the dial. dialAccept fails the test unless both sides
// connect.
func dialAccept(t testing.TB, ctx context.Context, d *Dialer, a *Accepter, peer ed25519.PublicKey,
	prepare func(*FirstFlight) (*FirstFlight, error), flightDelay time.Duration) (dialed, accepted *quic.Conn) {
	t.Helper()
	acc := make(chan *quic.Conn, 1)
	errc := make(chan error, 1)
	deliver := func(ctx context.Context, f *FirstFlight) error {
		if prepare != nil {
			g, err := prepare(f)
			if err != nil {
				return err
			}
			f = g
		}
		go func() {
			time.Sleep(flightDelay)
			c, err := a.Accept(ctx, f)
			if err != nil {
				errc <- err
				return
			}
			acc <- c
		}()
		return nil
	}
	dialed, err := d.Dial(ctx, peer, deliver)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case accepted = <-acc:
	case err := <-errc:
		t.Fatal(err)
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	return dialed, accepted
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

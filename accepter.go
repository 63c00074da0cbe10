package quicpipe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlogwriter"
)

// ErrClosed is returned by the methods of a closed Dialer or Accepter. It
// wraps net.ErrClosed.
var ErrClosed = fmt.Errorf("quicpipe: closed: %w", net.ErrClosed)

// An Accepter accepts peer connections through a relay. It owns one UDP
// socket, stays registered with the relay until Close, and serves any number
// of dials over its life.
type Accepter struct {
	p  *peer
	ln *quic.Listener

	mu      sync.Mutex
	waiting map[string]chan acceptResult // by original destination CID
	closed  bool

	done chan struct{}
	wg   sync.WaitGroup

	mbox mailboxState // see mailbox_client.go
}

// odcidHolder carries a connection's original destination CID from quic-go's
// Tracer callback to the accept loop, through the connection's context.
type odcidHolder struct{ odcid []byte }

type odcidKey struct{}

type acceptResult struct {
	conn *quic.Conn
	err  error
}

// NewAccepter opens the socket (or takes Config.Conn), registers with the
// relay over it, and starts listening for the first flights given to Accept.
// Only dialers whose keys are in Config.TrustedPeers are accepted.
func NewAccepter(ctx context.Context, cfg *Config) (*Accepter, error) {
	c, err := populateConfig(cfg, true)
	if err != nil {
		return nil, err
	}
	tlsConf, err := ServerTLSConfig(c.Identity, c.TrustedPeers, PeerALPN)
	if err != nil {
		return nil, err
	}
	p, err := newPeer(ctx, c)
	if err != nil {
		return nil, err
	}
	a := &Accepter{p: p, waiting: make(map[string]chan acceptResult), done: make(chan struct{})}
	p.tr.ConnContext = func(ctx context.Context, _ *quic.ClientInfo) (context.Context, error) {
		return context.WithValue(ctx, odcidKey{}, &odcidHolder{}), nil
	}
	qconf := c.peerQUICConfig()
	userTracer := qconf.Tracer
	qconf.Tracer = func(ctx context.Context, isClient bool, cid quic.ConnectionID) qlogwriter.Trace {
		if h, ok := ctx.Value(odcidKey{}).(*odcidHolder); ok && !isClient {
			h.odcid = cid.Bytes()
			// quic-go issues the connection's first CID after this call;
			// they stay registered until a while after the connection ends.
			p.gen.releaseAfter(ctx, p.gen.pin())
			// The context ends when the handshake fails (or, later, when
			// the connection closes): tell a waiting Accept why.
			a.wg.Go(func() {
				select {
				case <-ctx.Done():
					a.deliver(string(h.odcid), acceptResult{err: context.Cause(ctx)})
				case <-a.done:
				}
			})
		}
		if userTracer != nil {
			return userTracer(ctx, isClient, cid)
		}
		return nil
	}
	ln, err := p.tr.Listen(tlsConf, qconf)
	if err != nil {
		p.close()
		return nil, fmt.Errorf("quicpipe: listen: %w", err)
	}
	a.ln = ln
	a.wg.Go(a.acceptLoop)
	return a, nil
}

// acceptLoop hands each established connection to the Accept call waiting
// for its first flight, and closes connections nobody waits for.
func (a *Accepter) acceptLoop() {
	for {
		qc, err := a.ln.Accept(context.Background())
		if err != nil {
			return
		}
		var key string
		if h, ok := qc.Context().Value(odcidKey{}).(*odcidHolder); ok {
			key = string(h.odcid)
		}
		if !a.deliver(key, acceptResult{conn: qc}) {
			qc.CloseWithError(0x1, "no pending accept")
		}
	}
}

// deliver hands a result to the Accept call waiting for odcid, if any.
func (a *Accepter) deliver(odcid string, r acceptResult) bool {
	a.mu.Lock()
	ch := a.waiting[odcid]
	delete(a.waiting, odcid)
	a.mu.Unlock()
	if ch == nil {
		return false
	}
	ch <- r
	return true
}

// Accept feeds a dialer's first flight into the Accepter's QUIC stack as if
// it had arrived from the relay, and waits until that connection is
// established (the answer travels through the relay) or ctx is done. The
// dialer answers within a round trip once the flight is in; if it stays
// silent for the handshake idle timeout (Config.QUICConfig, 5 s by default)
// because it gave up or the flight is stale, Accept fails with quic-go's
// idle timeout error.
func (a *Accepter) Accept(ctx context.Context, flight *FirstFlight) (*quic.Conn, error) {
	info, err := flight.check()
	if err != nil {
		return nil, err
	}
	if err := a.p.sess.ensureWindow(ctx); err != nil {
		return nil, err
	}
	key := string(info.ODCID)
	ch := make(chan acceptResult, 1)
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, ErrClosed
	}
	if _, dup := a.waiting[key]; dup {
		a.mu.Unlock()
		return nil, badFlight("this first flight is already being accepted")
	}
	a.waiting[key] = ch
	a.mu.Unlock()
	// The connection's own copy of the relay's address keys its direct
	// path (see connRoute): quic-go takes the first datagram's source as
	// the connection's remote address.
	remote := a.p.newRemote()
	route := a.p.direct.prepare(remote)
	for _, d := range flight.Datagrams {
		a.p.pconn.inject(d, remote)
	}
	select {
	case r := <-ch:
		if r.err != nil {
			a.p.direct.abandon(remote)
			return nil, fmt.Errorf("quicpipe: accept: handshake failed: %w", r.err)
		}
		a.p.direct.start(r.conn, remote, route, false)
		return r.conn, nil
	case <-ctx.Done():
	case <-a.done:
	}
	a.p.direct.abandon(remote)
	a.mu.Lock()
	if a.waiting[key] == ch {
		delete(a.waiting, key)
	}
	a.mu.Unlock()
	select {
	case r := <-ch: // lost the race: the connection arrived anyway
		if r.conn != nil {
			r.conn.CloseWithError(0x1, "accept canceled")
		}
	default:
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("quicpipe: accept: handshake not completed: %w", ctx.Err())
	}
	return nil, ErrClosed
}

// Registration returns the Accepter's current registration with the relay.
func (a *Accepter) Registration() Registration { return a.p.sess.registration() }

// Path returns the path conn uses now. It reports false if conn is not an
// open connection of a, or if direct paths are off (Config.DisableDirect):
// then every connection is relayed.
func (a *Accepter) Path(conn *quic.Conn) (PathInfo, bool) { return a.p.direct.path(conn) }

// DirectStats returns the counters of a's direct-path work.
func (a *Accepter) DirectStats() DirectStats { return a.p.direct.stats() }

// LocalAddr returns the address of the Accepter's socket.
func (a *Accepter) LocalAddr() net.Addr { return a.p.conn.LocalAddr() }

// Close unregisters from the relay, closes every accepted connection and the
// socket (unless Config.Conn was given). It is safe to call more than once.
func (a *Accepter) Close() error {
	a.mu.Lock()
	already := a.closed
	a.closed = true
	a.mu.Unlock()
	if !already {
		close(a.done)
	}
	a.CloseMailbox()
	err := a.ln.Close()
	perr := a.p.close()
	a.wg.Wait()
	if errors.Is(err, quic.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return errors.Join(err, perr)
}

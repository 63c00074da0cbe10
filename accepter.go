package quicpipe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

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

	mu         sync.Mutex
	waiting    map[string]chan acceptResult // by original destination CID
	handshakes map[*net.UDPAddr]time.Time   // deadline of each Accept, by its remote address
	closed     bool

	done chan struct{}
	wg   sync.WaitGroup

	mbox mailboxState // see peer_mailbox.go
	sl   sleepState   // see peer_sleep.go
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
	return newAccepter(ctx, cfg, peerOptions{})
}

func newAccepter(ctx context.Context, cfg *Config, opts peerOptions) (*Accepter, error) {
	c, err := populateConfig(cfg, true)
	if err != nil {
		return nil, err
	}
	tlsConf, err := ServerTLSConfig(c.Identity, c.TrustedPeers, PeerALPN)
	if err != nil {
		return nil, err
	}
	p, err := newPeer(ctx, c, opts)
	if err != nil {
		return nil, err
	}
	a := &Accepter{
		p:          p,
		waiting:    make(map[string]chan acceptResult),
		handshakes: make(map[*net.UDPAddr]time.Time),
		done:       make(chan struct{}),
	}
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
	// Each handshake may last as long as its Accept (see handshakeConfig).
	base := qconf.Clone()
	qconf.GetConfigForClient = func(info *quic.ClientInfo) (*quic.Config, error) {
		return a.handshakeConfig(base, info.RemoteAddr), nil
	}
	ln, err := p.tr.Listen(tlsConf, qconf)
	if err != nil {
		p.close()
		return nil, fmt.Errorf("quicpipe: listen: %w", err)
	}
	a.ln = ln
	a.wg.Go(a.acceptLoop)
	a.initSleep(c.SleepAfter)
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
			qc.CloseWithError(codeNotAccepted, "no pending accept")
		}
	}
}

// codeNotAccepted is the application error code with which an Accepter
// closes a connection no Accept call takes.
const codeNotAccepted quic.ApplicationErrorCode = 0x1

// acceptHandshakeTimeout bounds the handshake of an Accept whose context
// has no deadline.
const acceptHandshakeTimeout = 30 * time.Second

// flightRepeat is how often Accept feeds the first flight to quic-go again
// while the handshake is in progress.
const flightRepeat = time.Second

// handshakeConfig returns the configuration of a new server connection
// whose first datagram came from remote. A connection started by Accept
// gets a handshake idle timeout that lasts until the Accept's deadline:
// quic-go's default (5 s from the accepter's first answer) would end the
// handshake while the dialer, whose held-back retransmissions never arrive,
// still waits for an answer that was lost on the way.
func (a *Accepter) handshakeConfig(base *quic.Config, remote net.Addr) *quic.Config {
	ua, _ := remote.(*net.UDPAddr)
	a.mu.Lock()
	deadline, ok := a.handshakes[ua]
	a.mu.Unlock()
	if !ok {
		return base
	}
	c := base.Clone()
	c.HandshakeIdleTimeout = max(time.Until(deadline), time.Second)
	return c
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
// established (the answer travels through the relay) or ctx is done.
//
// The dialer answers within a round trip once the flight is in, unless the
// accepter's answers are lost on the way. QUIC recovers from that with the
// client's retransmissions, but a dialer's retransmitted Initials are held
// back like its first flight: Accept stands in for them, feeding the flight
// to its QUIC stack again every second until the handshake completes, and
// gives the handshake until ctx's deadline (30 s if ctx has none) instead of
// quic-go's handshake idle timeout. A dialer that gave up, or a stale
// flight, therefore makes Accept wait until then and fail with quic-go's
// idle timeout error. On a closed Accepter, or one closed while Accept
// waits, the error is ErrClosed.
func (a *Accepter) Accept(ctx context.Context, flight *FirstFlight) (*quic.Conn, error) {
	if a.p.closed.Load() {
		return nil, ErrClosed
	}
	info, err := flight.check()
	if err != nil {
		return nil, err
	}
	// An Accept in progress, and the connection it returns while it
	// lives, keep the Accepter awake.
	a.busy(1)
	qc, err := a.accept(ctx, flight, info.ODCID)
	if err != nil {
		a.busy(-1)
		return nil, err
	}
	a.wg.Go(func() {
		select {
		case <-qc.Context().Done():
		case <-a.done:
		}
		a.busy(-1)
	})
	return qc, nil
}

func (a *Accepter) accept(ctx context.Context, flight *FirstFlight, odcid []byte) (*quic.Conn, error) {
	if err := a.p.sess.ensureWindow(ctx); err != nil {
		return nil, a.p.closedOr(err)
	}
	key := string(odcid)
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
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(acceptHandshakeTimeout)
	}
	a.mu.Lock()
	a.handshakes[remote] = deadline
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.handshakes, remote)
		a.mu.Unlock()
	}()
	route := a.p.direct.prepare(remote)
	inject := func() {
		for _, d := range flight.Datagrams {
			a.p.pconn.inject(d, remote)
		}
	}
	inject()
	// The repeated datagrams are duplicates to quic-go: it drops them, but
	// counts their bytes first, and each datagram received lets the server
	// send three times as much before the client's address is validated
	// (RFC 9000, section 8.1). Without them, a server whose first answers
	// were lost stops retransmitting after about three tries, however long
	// the handshake may last.
	repeat := time.NewTicker(flightRepeat)
	defer repeat.Stop()
wait:
	for {
		select {
		case r := <-ch:
			if r.err != nil {
				a.p.direct.abandon(remote)
				return nil, a.p.closedOr(acceptError(r.err))
			}
			a.p.direct.start(r.conn, remote, route, false)
			return r.conn, nil
		case <-repeat.C:
			inject()
		case <-ctx.Done():
			break wait
		case <-a.done:
			break wait
		}
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
			r.conn.CloseWithError(codeNotAccepted, "accept canceled")
		}
	default:
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("quicpipe: accept: handshake not completed: %w", ctx.Err())
	}
	return nil, ErrClosed
}

// acceptError explains why the handshake of an Accept failed.
func acceptError(err error) error {
	var it *quic.IdleTimeoutError
	var ht *quic.HandshakeTimeoutError
	if errors.As(err, &it) || errors.As(err, &ht) {
		return fmt.Errorf("quicpipe: accept: the handshake timed out: the dialer never completed it (it gave up, the flight was stale, or the answers were lost): %w", err)
	}
	return fmt.Errorf("quicpipe: accept: handshake failed: %w", err)
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
		a.leave()
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

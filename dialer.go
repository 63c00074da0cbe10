package quicpipe

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlogwriter"
)

// A Dialer opens peer connections through a relay. It owns one UDP socket
// and stays registered with the relay until Close.
type Dialer struct {
	p *peer
}

// NewDialer opens the socket (or takes Config.Conn) and registers with the
// relay over it. It fails if the relay cannot be reached or refuses.
func NewDialer(ctx context.Context, cfg *Config) (*Dialer, error) {
	return newDialer(ctx, cfg, peerOptions{})
}

func newDialer(ctx context.Context, cfg *Config, opts peerOptions) (*Dialer, error) {
	c, err := populateConfig(cfg, false)
	if err != nil {
		return nil, err
	}
	p, err := newPeer(ctx, c, opts)
	if err != nil {
		return nil, err
	}
	return &Dialer{p: p}, nil
}

// DeliverFunc carries a dialer's first flight to the accepter, by any means.
// It may return before the flight arrives; the handshake completes when the
// accepter feeds it to Accepter.Accept.
type DeliverFunc func(ctx context.Context, flight *FirstFlight) error

// Dial opens a connection to the accepter whose pinned key is peer. It starts
// the QUIC handshake towards the relay's address, holds back the first flight
// and passes it to deliver, then waits for the accepter's answer through the
// relay for as long as ctx allows (a person may take minutes to carry the
// flight). Canceling ctx before the handshake completes aborts the dial; once
// Dial returns, ctx no longer matters.
//
// Dial returns only once the accepter has accepted the dialer's key (see
// "Confirmation" in docs/PROTOCOL.md); if it refuses it, the error wraps
// ErrKeyRefused. An error from ctx says whether the accepter answered at
// all.
//
// The connection is quic-go's own: streams and datagrams work as usual. It
// lives on the Dialer's socket and is closed by Dialer.Close. On a closed
// Dialer, or one closed while the dial runs, the error is ErrClosed.
func (d *Dialer) Dial(ctx context.Context, peer ed25519.PublicKey, deliver DeliverFunc) (*quic.Conn, error) {
	if deliver == nil {
		return nil, errors.New("quicpipe: Dial needs a DeliverFunc")
	}
	if d.p.closed.Load() {
		return nil, ErrClosed
	}
	qc, err := d.dial(ctx, peer, deliver)
	if err != nil {
		// A dial that Close cut short fails with quic-go's "transport
		// closed" (or whatever the close interrupted): say ErrClosed.
		return nil, d.p.closedOr(err)
	}
	return qc, nil
}

// dialOutcome is the outcome of quic-go's dial.
type dialOutcome struct {
	conn *quic.Conn
	err  error
}

// dial is Dial's work: it starts quic-go's dial with its first flight held
// back, delivers the flight, and waits for the accepter's confirmation.
func (d *Dialer) dial(ctx context.Context, peer ed25519.PublicKey, deliver DeliverFunc) (*quic.Conn, error) {
	tlsConf, err := ClientTLSConfig(d.p.cfg.Identity, peer, PeerALPN)
	if err != nil {
		return nil, err
	}
	if err := d.p.sess.ensureWindow(ctx); err != nil {
		return nil, err
	}
	// The accepter's session ticket is its confirmation (see confirmation).
	confirmed := newConfirmation()
	tlsConf.ClientSessionCache = confirmed
	hold := &dialHold{pc: d.p.pconn, cp: newCapture()}
	defer hold.release()
	qconf := d.dialQUICConfig(ctx, hold)

	// The connection's own copy of the relay's address keys its direct
	// path (see connRoute).
	remote := d.p.newRemote()
	route := d.p.direct.prepare(remote)
	established := false
	defer func() {
		if !established {
			d.p.direct.abandon(remote)
		}
	}()

	// The connection's CIDs stay registered for as long as it lives.
	unpin := d.p.gen.pin()
	defer func() {
		if !established {
			unpin()
		}
	}()

	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := make(chan dialOutcome, 1)
	go func() {
		c, err := d.p.tr.Dial(dctx, remote, tlsConf, qconf)
		res <- dialOutcome{c, err}
	}()
	if err := deliverFlight(ctx, hold.cp, deliver, res, cancel); err != nil {
		return nil, err
	}
	r := <-res
	if r.err != nil {
		return nil, handshakeError(ctx, r.err, hold.cp.answered.Load())
	}
	if err := awaitConfirmation(ctx, r.conn, confirmed); err != nil {
		return nil, err
	}
	established = true
	d.p.gen.releaseAfter(r.conn.Context(), unpin)
	d.p.direct.start(r.conn, remote, route, true)
	return r.conn, nil
}

// dialQUICConfig returns the QUIC configuration of one dial: its
// handshake bounded by ctx only, and a Tracer that starts holding back the
// dial's packets.
func (d *Dialer) dialQUICConfig(ctx context.Context, hold *dialHold) *quic.Config {
	qconf := d.p.cfg.peerQUICConfig()
	// The handshake waits for a person, not for the network: only ctx
	// bounds it. quic-go's own timeout lies a little beyond ctx's deadline,
	// so that the error says which stage the handshake reached.
	qconf.HandshakeIdleTimeout = dialHandshakeUnbounded
	if dl, ok := ctx.Deadline(); ok {
		qconf.HandshakeIdleTimeout = max(time.Until(dl), 0) + dialHandshakeSlack
	}
	userTracer := qconf.Tracer
	// quic-go calls Tracer with the original destination CID before the
	// connection sends anything: start holding back from that moment.
	qconf.Tracer = func(tctx context.Context, isClient bool, cid quic.ConnectionID) qlogwriter.Trace {
		if isClient {
			hold.start(cid.Bytes())
		}
		if userTracer != nil {
			return userTracer(tctx, isClient, cid)
		}
		return nil
	}
	return qconf
}

// The handshake timeouts of a dial: without a deadline in its context,
// practically none; with one, a little beyond it.
const (
	dialHandshakeUnbounded = 24 * time.Hour
	dialHandshakeSlack     = time.Second
)

// deliverFlight waits for the dial's first flight and passes it to
// deliver. If the flight cannot be captured or delivered, or quic-go's dial
// ends first, it cancels the dial and returns why.
func deliverFlight(ctx context.Context, cp *capture, deliver DeliverFunc, res <-chan dialOutcome, cancel func()) error {
	select {
	case <-cp.done:
		if cp.err != nil {
			cancel()
			<-res
			return cp.err
		}
		if err := deliver(ctx, cp.flight); err != nil {
			cancel()
			<-res
			return fmt.Errorf("quicpipe: delivering the first flight: %w", err)
		}
		return nil
	case r := <-res:
		if r.err == nil {
			r.conn.CloseWithError(0, "")
			return errors.New("quicpipe: handshake completed before the first flight was delivered")
		}
		return fmt.Errorf("quicpipe: dial: %w", r.err)
	}
}

// awaitConfirmation waits until the accepter has accepted the dialer's
// key. quic-go's client completes its handshake once it has sent its
// Finished, before the accepter has checked the dialer's certificate: the
// connection is the caller's only once the accepter has accepted it, or an
// untrusted dialer would be told it connected.
func awaitConfirmation(ctx context.Context, qc *quic.Conn, confirmed *confirmation) error {
	select {
	case <-confirmed.done:
		return nil
	case <-qc.Context().Done():
		return handshakeError(ctx, context.Cause(qc.Context()), true)
	case <-ctx.Done():
		qc.CloseWithError(0, "")
		return handshakeError(ctx, ctx.Err(), true)
	}
}

// ErrKeyRefused is returned (wrapped) by Dial and DialMailbox when the
// accepter refuses the dialer's key: it is not among the accepter's
// TrustedPeers (the accepter closed the handshake with the TLS alert
// bad_certificate or certificate_required). The accepter's side of the same
// failure is ErrUntrustedKey.
var ErrKeyRefused = errors.New("quicpipe: the accepter refused this dialer's key (it is not among the accepter's trusted peers)")

// TLS alerts an accepter sends when it refuses the dialer's certificate
// (RFC 8446, section 6), as QUIC CRYPTO_ERROR codes (0x100 + alert).
const (
	alertBadCertificate      = 0x100 + 42
	alertCertificateRequired = 0x100 + 116
)

// handshakeError explains why a dial's handshake failed: the accepter
// refused the dialer's key, it never answered, or it answered but the
// handshake did not complete before ctx ended. answered tells whether the
// dialer heard from the accepter.
func handshakeError(ctx context.Context, err error, answered bool) error {
	var te *quic.TransportError
	if errors.As(err, &te) && te.Remote &&
		(te.ErrorCode == alertBadCertificate || te.ErrorCode == alertCertificateRequired) {
		return fmt.Errorf("%w: %w", ErrKeyRefused, err)
	}
	if ctx.Err() == nil {
		return fmt.Errorf("quicpipe: handshake with the accepter: %w", err)
	}
	if !answered {
		return fmt.Errorf("quicpipe: no answer from the accepter (the first flight was delivered): %w", ctx.Err())
	}
	return fmt.Errorf("quicpipe: the accepter answered, but the handshake did not complete: %w", ctx.Err())
}

// confirmation is a dial's tls.ClientSessionCache, used as a signal: it
// stores nothing. crypto/tls calls Put when the accepter's first session
// ticket arrives, and an accepter sends it (with QUIC's HANDSHAKE_DONE)
// only when its own handshake is complete, that is once it has verified the
// dialer's certificate. Get finds nothing: a dial never resumes a session.
type confirmation struct {
	once sync.Once
	done chan struct{} // closed by the first ticket
}

func newConfirmation() *confirmation { return &confirmation{done: make(chan struct{})} }

// Get reports that no session is stored.
func (c *confirmation) Get(string) (*tls.ClientSessionState, bool) { return nil, false }

// Put records the accepter's confirmation; a nil session (a removal) is
// not one.
func (c *confirmation) Put(_ string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.once.Do(func() { close(c.done) })
	}
}

// Registration returns the Dialer's current registration with the relay.
func (d *Dialer) Registration() Registration { return d.p.sess.registration() }

// LocalAddr returns the address of the Dialer's socket.
func (d *Dialer) LocalAddr() net.Addr { return d.p.conn.LocalAddr() }

// Path returns the path conn uses now. It reports false if conn is not an
// open connection of d, or if direct paths are off (Config.DisableDirect):
// then every connection is relayed.
func (d *Dialer) Path(conn *quic.Conn) (PathInfo, bool) { return d.p.direct.path(conn) }

// DirectStats returns the counters of d's direct-path work.
func (d *Dialer) DirectStats() DirectStats { return d.p.direct.stats() }

// Close unregisters from the relay, closes every connection of the Dialer
// and its socket (unless Config.Conn was given). It is safe to call more
// than once.
func (d *Dialer) Close() error { return d.p.close() }

// Dial is a convenience for one connection: it creates a Dialer, dials peer
// through it and returns the connection, which owns the Dialer: the Dialer
// closes (unregistering from the relay and closing its socket) once the
// connection ends, whichever side closes it. Use NewDialer for several
// connections, or for Dialer.Path; Config.OnPathChange reports the path of
// this one.
func Dial(ctx context.Context, cfg *Config, peer ed25519.PublicKey, deliver DeliverFunc) (*quic.Conn, error) {
	return dialOwned(ctx, cfg, func(d *Dialer) (*quic.Conn, error) { return d.Dial(ctx, peer, deliver) })
}

// dialOwned creates a Dialer, opens one connection with dial and ties the
// Dialer's life to it.
func dialOwned(ctx context.Context, cfg *Config, dial func(*Dialer) (*quic.Conn, error)) (*quic.Conn, error) {
	d, err := NewDialer(ctx, cfg)
	if err != nil {
		return nil, err
	}
	qc, err := dial(d)
	if err != nil {
		d.Close()
		return nil, err
	}
	go func() {
		<-qc.Context().Done()
		d.Close()
	}()
	return qc, nil
}

package quicpipe

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quicpipe/quicpipe/internal/forward"
)

// Relay forwards QUIC packets between peers by destination connection ID and
// serves the registration API over HTTP/3, both on one UDP port: one socket,
// or one per forwarding reader (RelayConfig.Readers).
//
// Datagrams whose 12-byte destination CID is registered are forwarded
// unchanged, without decryption, to the registered address. Everything else
// goes to the relay's own HTTP/3 server, except short-header packets for
// unknown CIDs (dropped) and peers' first flights (dropped; see
// docs/PROTOCOL.md).
type Relay struct {
	cfg     *RelayConfig
	conn    *net.UDPConn
	ownConn bool
	rconn   *forward.Conn // the forwarding engine: the socket as quic-go sees it
	// readers are the extra forwarding readers of the relay's port, on
	// their own sockets (RelayConfig.Readers), which the relay owns.
	readers []*forward.Reader
	rsocks  []*net.UDPConn
	tr      *quic.Transport
	ln      *quic.Listener
	h3      *http3.Server
	log     *slog.Logger

	table   *forward.Table
	targets forward.Targets // addresses of live registrations: the only sources forwarded
	locals  localAddrs      // the host's addresses, never a target on the relay's port
	// follow carries registrations whose peer seems to have moved from the
	// forwarding path to the janitor (see wakeFollow).
	follow chan *regEntry

	regMu   sync.Mutex
	regs    registry // guarded by regMu
	closing bool
	// draining is set by Shutdown: sleepers' keep-alives no longer keep
	// them (relay_sleep.go).
	draining atomic.Bool
	// remoteRegs counts the registrations held by other members of a
	// fleet (see ApplyRemote). Guarded by regMu.
	remoteRegs int

	// derivations is the per-source budget of CIDs derived (see
	// RelayConfig.DerivationsPerSecond); testHookDerived, if set, runs after
	// a registration's CIDs are derived, before they are applied.
	derivations     sourceLimiter
	testHookDerived atomic.Pointer[func()]

	stats relayCounters
	conns *connLimits

	// closeCtx is cancelled when Close starts; connections served by
	// serveConn close with it.
	closeCtx    context.Context
	closeCancel context.CancelFunc
	connMu      sync.Mutex     // orders connWG.Add after closeCancel
	connWG      sync.WaitGroup // serveConn goroutines

	mailbox *mailboxServer // nil if RelayConfig.Mailbox is nil
	sleep   *sleepServer   // nil unless the relay offers sleep (relay_sleep.go)

	xdp *relayXDP // nil unless RelayConfig.FastPath is set

	tunnel *tunnelServer // nil unless RelayConfig.Tunnel is set
	// tunnelURL is the tunnel's URL as registration answers announce it
	// ("" without a tunnel).
	tunnelURL string
	probes    *probeServer // nil without RelayConfig.ProbeConns (relay_probe.go)

	serveOnce sync.Once
	closeOnce sync.Once
	closed    chan struct{}
	wg        sync.WaitGroup
	closeErr  error
}

// ListenRelay opens a UDP socket on addr (for example ":4433" or
// "127.0.0.1:0") and returns a Relay that owns it. On Linux the socket has
// SO_REUSEPORT, so that the relay's forwarding readers (RelayConfig.Readers)
// can share its port.
func ListenRelay(addr string, cfg *RelayConfig) (*Relay, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("quicpipe: relay address: %w", err)
	}
	conn, err := listenReusePort(ua)
	if err != nil {
		return nil, fmt.Errorf("quicpipe: relay listen: %w", err)
	}
	r, err := NewRelay(conn, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	r.ownConn = true
	return r, nil
}

// NewRelay returns a Relay serving on conn. The caller keeps ownership of
// conn: Close stops using it but does not close it. After NewRelay the
// socket belongs to the relay until Close; nothing else may read from it.
func NewRelay(conn *net.UDPConn, cfg *RelayConfig) (*Relay, error) {
	c, err := populateRelayConfig(cfg)
	if err != nil {
		return nil, err
	}
	var tlsConf *tls.Config
	if c.TLSConfig != nil {
		tlsConf = c.TLSConfig.Clone()
	} else {
		tlsConf, err = ServerTLSConfig(c.Identity, nil, http3.NextProtoH3)
		if err != nil {
			return nil, err
		}
	}
	baseTLS := tlsConf
	tlsConf = http3.ConfigureTLSConfig(tlsConf.Clone())
	qconf := &quic.Config{MaxIdleTimeout: 60 * time.Second}
	if c.QUICConfig != nil {
		qconf = c.QUICConfig.Clone()
	}
	leanRelayQUIC(qconf)
	if qconf.MaxIncomingStreams == 0 {
		qconf.MaxIncomingStreams = int64(c.MaxStreamsPerConn)
	}
	if qconf.MaxIncomingUniStreams == 0 {
		qconf.MaxIncomingUniStreams = int64(c.MaxStreamsPerConn)
	}
	r := &Relay{
		cfg:    c,
		conn:   conn,
		probes: newProbeServer(c),
		log:    c.Logger,
		table:  forward.NewTable(),
		follow: make(chan *regEntry, 64),
		closed: make(chan struct{}),

		derivations: sourceLimiter{
			rate:    float64(c.DerivationsPerSecond),
			burst:   float64(c.DerivationBurst),
			max:     c.MaxRegistrations,
			buckets: make(map[netip.Prefix]*forward.TokenBucket),
		},
		conns: newConnLimits(c),
	}
	r.regs = newMemRegistry((*relayIndex)(r))
	r.closeCtx, r.closeCancel = context.WithCancel(context.Background())
	r.stats.rejected = newRejectCounters(rejectCodes)
	r.rconn, err = forward.NewConn(conn, r.table, &r.targets, forward.Config{
		ResetKey:                 c.StatelessResetKey,
		MaxPacketsPerSecond:      c.MaxPacketsPerSecond,
		MaxBytesPerSecond:        c.MaxBytesPerSecond,
		MaxTotalPacketsPerSecond: c.MaxTotalPacketsPerSecond,
		MaxTotalBytesPerSecond:   c.MaxTotalBytesPerSecond,
		Follow:                   r.wakeFollow,
		GRO:                      true,
		Sleep:                    r.sleepHook(c),
	})
	if err != nil {
		return nil, fmt.Errorf("quicpipe: relay socket: %w", err)
	}
	if err := r.openReaders(); err != nil {
		return nil, err
	}
	// Stateless resets only ever answer packets for the relay's own CIDs:
	// packets for unknown peer CIDs are dropped before quic-go sees them, so
	// a peer connection whose registration lapsed is never reset.
	r.tr = &quic.Transport{
		Conn:                  r.rconn,
		ConnectionIDGenerator: r.rconn.CIDGenerator(),
		StatelessResetKey:     c.StatelessResetKey,
		ConnContext:           r.connContext,
		VerifySourceAddress:   r.conns.needRetry,
	}
	r.ln, err = r.tr.Listen(tlsConf, qconf)
	if err != nil {
		r.tr.Close()
		r.closeReaders()
		return nil, fmt.Errorf("quicpipe: relay listen: %w", err)
	}
	if c.FastPath != nil {
		if err := r.attachXDP(); err != nil {
			r.ln.Close()
			r.tr.Close()
			r.closeReaders()
			return nil, err
		}
	}
	if c.Tunnel != nil {
		if r.tunnel, err = newTunnelServer(r, c.Tunnel, baseTLS, qconf); err != nil {
			if r.xdp != nil {
				r.xdp.prog.Close()
			}
			r.ln.Close()
			r.tr.Close()
			r.closeReaders()
			return nil, err
		}
		r.tunnelURL = r.tunnel.announce()
	}
	// Opened here, after the last failure NewRelay may return, so that it
	// reads the network namespace the relay runs in.
	if rd, err := newAddrReader(); err != nil {
		c.Logger.Warn("cannot read the host's addresses: only loopback ones are refused as targets on the relay's port", "err", err)
	} else {
		r.locals.rd = rd
		r.locals.refresh()
	}
	mux := http.NewServeMux()
	mux.HandleFunc(registerPath, r.handleRegister)
	if c.Mailbox != nil {
		r.mailbox = newMailboxServer(r, c.Mailbox)
		mux.HandleFunc(mailboxPath, r.mailbox.handle)
	}
	if r.sleep != nil {
		mux.HandleFunc(sleepPath, r.handleSleep)
	}
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, req *http.Request) {
		r.apiError(w, http.StatusNotFound, CodeNotFound, "no such endpoint: "+req.URL.Path)
	})
	if c.Handler != nil {
		mux.Handle("/", c.Handler)
	}
	r.h3 = &http3.Server{
		Handler: r.bodyDeadline(mux),
		ConnContext: func(ctx context.Context, qc *quic.Conn) context.Context {
			r.stats.handshakes.Add(1)
			return context.WithValue(ctx, quicConnKey{}, qc)
		},
	}
	return r, nil
}

type quicConnKey struct{}

// The receive windows the relay offers its HTTP/3 clients at first, unless
// RelayConfig.QUICConfig sets them (quic-go: 512 KiB per stream, 768 KiB
// per connection). The relay's API carries requests of a few KiB, a mailbox
// post of at most MailboxConfig.MaxPostBytes (16 KiB by default) and a
// trickle of flights down an open mailbox. The window is what a client may
// make the relay buffer unread, per stream and per connection: a few idle
// connections must not pin gigabytes. A window grows (up to quic-go's
// maximum) only while the relay reads fast, so bulk uploads to an
// embedding service's Handler still speed up.
const (
	relayStreamWindow = 32 << 10
	relayConnWindow   = 64 << 10
)

// leanRelayQUIC sets the initial receive windows q leaves zero to the
// relay's.
func leanRelayQUIC(q *quic.Config) {
	if q.InitialStreamReceiveWindow == 0 {
		q.InitialStreamReceiveWindow = relayStreamWindow
	}
	if q.InitialConnectionReceiveWindow == 0 {
		q.InitialConnectionReceiveWindow = relayConnWindow
	}
}

// LocalAddr returns the address the relay listens on (a *net.UDPAddr).
func (r *Relay) LocalAddr() net.Addr { return r.conn.LocalAddr() }

// udpAddr returns the address the relay listens on.
func (r *Relay) udpAddr() *net.UDPAddr { return r.conn.LocalAddr().(*net.UDPAddr) }

// Serve serves the registration API and forwards packets until ctx is done
// or Close is called, then closes the relay. It returns nil in both cases,
// and an error if serving failed. Serve may be called once.
func (r *Relay) Serve(ctx context.Context) error {
	err := errors.New("quicpipe: Relay.Serve called twice")
	r.serveOnce.Do(func() {
		err = nil
		// Not after Close has started waiting for r.wg (connMu orders it).
		r.connMu.Lock()
		if r.closeCtx.Err() != nil {
			r.connMu.Unlock()
			return
		}
		r.wg.Go(r.janitor)
		r.startProbes()
		r.startReaders()
		r.connMu.Unlock()
		done := make(chan error, 1)
		go func() { done <- r.acceptConns(r.ln) }()
		r.log.Info("relay serving", "addr", r.LocalAddr().String())
		if r.tunnel != nil {
			r.tunnel.start()
		}
		if r.cfg.Authorizer == nil {
			r.log.Warn("relay API is open: anyone can register (set RelayConfig.Authorizer to restrict it)")
		}
		select {
		case <-ctx.Done():
			r.Close()
			<-done
		case <-r.closed:
			<-done
		case err = <-done:
			r.Close()
			if errors.Is(err, http.ErrServerClosed) || errors.Is(err, quic.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
				err = nil
			}
		}
		if err != nil {
			err = fmt.Errorf("quicpipe: relay: %w", err)
		}
	})
	return err
}

// Close stops the relay: open HTTP/3 connections are closed, forwarding stops
// and the socket is closed if the relay opened it. It is safe to call Close
// more than once and concurrently with Serve.
func (r *Relay) Close() error {
	r.closeOnce.Do(func() {
		r.regMu.Lock()
		r.closing = true
		r.regMu.Unlock()
		close(r.closed)
		r.connMu.Lock()
		r.closeCancel()
		r.connMu.Unlock()
		errs := []error{r.h3.Close(), r.ln.Close()}
		if r.tunnel != nil {
			errs = append(errs, r.tunnel.closeListeners())
		}
		r.connWG.Wait() // connections close with closeCtx, then serveConn returns
		errs = append(errs, r.tr.Close())
		if r.tunnel != nil {
			errs = append(errs, r.tunnel.closeTransport())
		}
		if r.xdp != nil {
			errs = append(errs, r.xdp.prog.Close())
		}
		if r.ownConn {
			errs = append(errs, r.conn.Close())
		}
		errs = append(errs, r.closeReaders())
		r.wg.Wait()
		if r.mailbox != nil {
			r.mailbox.releaseSleeping()
		}
		if r.locals.rd != nil {
			errs = append(errs, r.locals.rd.close())
		}
		r.closeErr = errors.Join(errs...)
	})
	return r.closeErr
}

// Shutdown drains the relay: it refuses new registrations and refreshes
// (503, code "closing") but keeps forwarding for the registrations it holds,
// until they have all gone (unregistered or expired) or ctx is done, and
// then closes the relay.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.regMu.Lock()
	r.closing = true
	r.regMu.Unlock()
	r.draining.Store(true)
	r.log.Info("relay draining")
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for r.localRegistrations() > 0 {
		select {
		case <-ctx.Done():
			return r.Close()
		case <-r.closed:
			return r.Close()
		case <-t.C:
		}
	}
	return r.Close()
}

func (r *Relay) registrations() int {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	return r.regs.count()
}

// localRegistrations returns the number of registrations the relay holds
// itself, not for other members of a fleet.
func (r *Relay) localRegistrations() int {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	return r.regs.count() - r.remoteRegs
}

// remoteRegistrations returns the number of registrations held by other
// members of a fleet.
func (r *Relay) remoteRegistrations() int {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	return r.remoteRegs
}

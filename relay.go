package quicpipe

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/ipv4"

	"github.com/quicpipe/quicpipe/internal/wire"
)

// RelayConfig configures a Relay. The zero value of each field selects the
// documented default; a Relay never modifies the RelayConfig it is given.
type RelayConfig struct {
	// Identity is the relay's Ed25519 key; peers pin its public key. Required
	// unless TLSConfig is set.
	Identity ed25519.PrivateKey
	// TLSConfig, if not nil, replaces the configuration built from Identity
	// (for example to serve a CA-issued certificate). It is cloned, and its
	// NextProtos are set to HTTP/3's.
	TLSConfig *tls.Config
	// QUICConfig configures the relay's QUIC endpoint. If nil, quic-go's
	// defaults are used with a 60s idle timeout.
	QUICConfig *quic.Config
	// Handler, if not nil, serves every HTTP/3 request outside /v1/, so that
	// an embedding service can mount its own routes beside the relay's.
	// If nil, such requests get 404.
	Handler http.Handler
	// RegistrationTTL is how long a registration lives unless refreshed.
	// If zero, 60s is used.
	RegistrationTTL time.Duration
	// MaxKeyLen is the longest CID key accepted, in bytes. If zero,
	// MaxCIDKeyLen (64) is used. Keys shorter than MinCIDKeyLen (16) are
	// always refused.
	MaxKeyLen int
	// MaxCIDsPerRegistration bounds the window of CIDs one key may register.
	// If zero, 4096 is used: a peer's window spans its live connections
	// (about 5 CIDs each) and 64 more (Config.RegistrationWindow), so that
	// is hundreds of connections made while its oldest one lives.
	MaxCIDsPerRegistration int
	// MaxCIDs bounds the CIDs registered in total. If zero, 1<<22 is used.
	MaxCIDs int
	// MaxRegistrations bounds the registrations in total. If zero, 100000
	// is used.
	MaxRegistrations int
	// MaxRegistrationsPerSource bounds the registrations held by one
	// source: the IPv4 address, or the IPv6 /64 prefix, of the observed
	// address. If zero, 64 is used.
	MaxRegistrationsPerSource int
	// MaxCIDsPerSource bounds the CIDs held by the registrations of one
	// source. If zero, 8192 is used: 64 peers with default windows fit, and
	// 512 sources are needed to fill the default MaxCIDs.
	MaxCIDsPerSource int
	// DerivationsPerSecond bounds how many CIDs the relay derives per second
	// for one source's registrations (new registrations and windows that
	// slide), and DerivationBurst how many at once: a token bucket per
	// source. A request over the budget is refused (429, code
	// "limit_derive", with Retry-After). If zero, 512 per second and a
	// burst of MaxCIDsPerSource are used. DerivationBurst must be at least
	// MaxCIDsPerRegistration.
	DerivationsPerSecond, DerivationBurst int
	// MaxBodyBytes bounds the size of an API request body. If zero, 4096 is
	// used.
	MaxBodyBytes int64

	// MaxConnsPerSource bounds the HTTP/3 connections, established or in
	// their handshake, from one source (an IPv4 address or an IPv6 /64).
	// A connection over it is refused at its first packet with
	// CONNECTION_REFUSED, before the relay keeps any state for it. If zero,
	// 64 is used.
	MaxConnsPerSource int
	// MaxConns bounds the HTTP/3 connections in total. If zero, 100000 is
	// used.
	MaxConns int
	// MaxHandshakes bounds the HTTP/3 handshakes in progress; connections
	// beyond it are refused. If zero, 2000 is used.
	MaxHandshakes int
	// RetryHandshakes is the number of handshakes in progress from which
	// every new connection must first prove its address with a Retry
	// (RFC 9000 section 8.1.2), which costs it one round trip and the relay
	// no state; so does a source with MaxConnsPerSource/4 (at least 4)
	// handshakes in progress. If zero, 256 is used; if negative, every
	// connection gets a Retry.
	RetryHandshakes int
	// MaxStreamsPerConn bounds the concurrent requests (bidirectional
	// streams) a client may have open on one connection, and separately its
	// unidirectional streams, unless QUICConfig sets MaxIncomingStreams or
	// MaxIncomingUniStreams. If zero, 16 is used.
	MaxStreamsPerConn int
	// RequestHeaderTimeout bounds how long a request may take to deliver
	// its headers, counted from the opening of its stream; a request over
	// it is reset with H3_REQUEST_INCOMPLETE. The relay's own API (/v1/)
	// then gives the body as long again (408, code "timeout"). If zero, 10s
	// is used.
	RequestHeaderTimeout time.Duration
	// IdleConnTimeout is how long a connection may stay open with no
	// request in progress and no live registration made over it (an open
	// mailbox is a request in progress); then the relay closes it.
	// Keep-alive packets do not count. If zero, 15s is used.
	IdleConnTimeout time.Duration

	// Authorizer, if not nil, decides whether each API request may proceed
	// (see TokenAuthorizer for HMAC-signed expiring tokens; NewRelay refuses
	// one whose secret is shorter than MinTokenSecretLen). If nil, the API
	// is open to anyone, and the relay logs that when it starts.
	Authorizer Authorizer
	// AllowPrivateTargets lets peers register loopback, link-local and
	// private addresses even when they reached the relay at an address of
	// another scope. If false, a non-public target is accepted only over a
	// connection that reached the relay at an address of the same scope: a
	// relay on loopback serves loopback peers, one on a private network
	// serves that network, one on a public address serves public addresses.
	AllowPrivateTargets bool
	// MaxPacketsPerSecond and MaxBytesPerSecond cap what the relay forwards
	// to one registration (token buckets with a one-second burst), in
	// userspace and in the XDP program alike. If zero, 100000 packets and
	// 125000000 bytes (1 Gbit/s) per second are used; a negative value
	// means unlimited.
	MaxPacketsPerSecond, MaxBytesPerSecond int64
	// MaxTotalPacketsPerSecond and MaxTotalBytesPerSecond cap what the relay
	// forwards in total (userspace and the XDP program each apply them to
	// what they forward). If zero, there is no global cap.
	MaxTotalPacketsPerSecond, MaxTotalBytesPerSecond int64
	// StatelessResetKey lets the relay reset, after a restart, the HTTP/3
	// connections of peers registered before it, so that they notice at once
	// and register again. It must stay the same across restarts. If nil and
	// Identity is set, a key derived from Identity is used; otherwise resets
	// are off. Packets for peers' CIDs never cause a reset.
	StatelessResetKey *quic.StatelessResetKey
	// Mailbox, if not nil, turns on the mailbox API (/v1/mailbox/, see
	// mailbox.go): an accepter holds a mailbox named by its public key and
	// dialers post their first flights to it. If nil, the mailbox is off and
	// its paths answer 404.
	Mailbox *MailboxConfig
	// FastPath, if not nil, starts a kernel fast path (see FastPath) once
	// the relay's socket is bound, for example relayxdp.New's XDP program
	// (Linux only); NewRelay fails with its error. If nil, every packet is
	// forwarded in userspace.
	FastPath func(FastPathConfig) (FastPath, error)
	// Logger receives the relay's logs. If nil, the relay logs nothing. The
	// relay never logs per packet.
	Logger *slog.Logger
}

func populateRelayConfig(c *RelayConfig) (*RelayConfig, error) {
	var cfg RelayConfig
	if c != nil {
		cfg = *c
	}
	if cfg.TLSConfig == nil && cfg.Identity == nil {
		return nil, errors.New("quicpipe: RelayConfig needs an Identity or a TLSConfig")
	}
	if cfg.RegistrationTTL == 0 {
		cfg.RegistrationTTL = 60 * time.Second
	}
	if cfg.MaxKeyLen == 0 {
		cfg.MaxKeyLen = MaxCIDKeyLen
	}
	if cfg.MaxCIDsPerRegistration == 0 {
		cfg.MaxCIDsPerRegistration = 4096
	}
	if cfg.MaxCIDs == 0 {
		cfg.MaxCIDs = 1 << 22
	}
	if cfg.MaxRegistrations == 0 {
		cfg.MaxRegistrations = 100000
	}
	if cfg.MaxRegistrationsPerSource == 0 {
		cfg.MaxRegistrationsPerSource = 64
	}
	if cfg.MaxCIDsPerSource == 0 {
		cfg.MaxCIDsPerSource = 8192
	}
	if cfg.DerivationsPerSecond == 0 {
		cfg.DerivationsPerSecond = 512
	}
	if cfg.DerivationBurst == 0 {
		cfg.DerivationBurst = max(cfg.MaxCIDsPerSource, cfg.MaxCIDsPerRegistration)
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 4096
	}
	if cfg.MaxConnsPerSource == 0 {
		cfg.MaxConnsPerSource = 64
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 100000
	}
	if cfg.MaxHandshakes == 0 {
		cfg.MaxHandshakes = 2000
	}
	if cfg.RetryHandshakes == 0 {
		cfg.RetryHandshakes = 256
	}
	if cfg.MaxStreamsPerConn == 0 {
		cfg.MaxStreamsPerConn = 16
	}
	if cfg.RequestHeaderTimeout == 0 {
		cfg.RequestHeaderTimeout = 10 * time.Second
	}
	if cfg.IdleConnTimeout == 0 {
		cfg.IdleConnTimeout = 15 * time.Second
	}
	if cfg.MaxPacketsPerSecond == 0 {
		cfg.MaxPacketsPerSecond = 100000
	}
	if cfg.MaxBytesPerSecond == 0 {
		cfg.MaxBytesPerSecond = 125_000_000
	}
	if cfg.StatelessResetKey == nil && cfg.Identity != nil {
		k := StatelessResetKeyFromIdentity(cfg.Identity)
		cfg.StatelessResetKey = &k
	}
	if ta, ok := cfg.Authorizer.(*TokenAuthorizer); ok {
		if ta == nil {
			return nil, errors.New("quicpipe: RelayConfig.Authorizer is a nil *TokenAuthorizer")
		}
		if err := ta.check(); err != nil {
			return nil, err
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Mailbox != nil {
		m, err := populateMailboxConfig(cfg.Mailbox)
		if err != nil {
			return nil, err
		}
		cfg.Mailbox = m
	}
	switch {
	case cfg.RegistrationTTL < time.Second:
		return nil, fmt.Errorf("quicpipe: RegistrationTTL %v is below 1s", cfg.RegistrationTTL)
	case cfg.MaxKeyLen < MinCIDKeyLen || cfg.MaxKeyLen > MaxCIDKeyLen:
		return nil, fmt.Errorf("quicpipe: MaxKeyLen must be %d to %d", MinCIDKeyLen, MaxCIDKeyLen)
	case cfg.MaxCIDsPerRegistration < 1, cfg.MaxCIDs < 1, cfg.MaxRegistrations < 1,
		cfg.MaxRegistrationsPerSource < 1, cfg.MaxCIDsPerSource < 1, cfg.DerivationsPerSecond < 1,
		cfg.MaxBodyBytes < 64:
		return nil, errors.New("quicpipe: RelayConfig limits must be positive (MaxBodyBytes at least 64)")
	case cfg.DerivationBurst < cfg.MaxCIDsPerRegistration:
		return nil, fmt.Errorf("quicpipe: RelayConfig.DerivationBurst %d is below MaxCIDsPerRegistration %d: the largest window could never be registered",
			cfg.DerivationBurst, cfg.MaxCIDsPerRegistration)
	case cfg.MaxConnsPerSource < 1, cfg.MaxConns < 1, cfg.MaxHandshakes < 1, cfg.MaxStreamsPerConn < 1,
		cfg.RequestHeaderTimeout < 0, cfg.IdleConnTimeout < 0:
		return nil, errors.New("quicpipe: RelayConfig connection limits and timeouts must be positive")
	}
	return &cfg, nil
}

// dest is a forwarding destination, immutable once published.
type dest struct {
	addr *net.UDPAddr
	ap   netip.AddrPort
	raw  rawAddr
}

// Relay forwards QUIC packets between peers by destination connection ID and
// serves the registration API over HTTP/3, both on one UDP socket.
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
	rconn   *relayConn
	tr      *quic.Transport
	ln      *quic.Listener
	h3      *http3.Server
	log     *slog.Logger

	table   *cidTable
	targets targetSet  // addresses of live registrations: the only sources forwarded
	locals  localAddrs // the host's addresses, never a target on the relay's port
	// follow carries registrations whose peer seems to have moved from the
	// forwarding path to the janitor (see wakeFollow).
	follow chan *registration

	regMu     sync.Mutex
	regs      map[string]*registration
	perSource map[netip.Prefix]sourceUsage
	closing   bool

	// derivations is the per-source budget of CIDs derived (see
	// RelayConfig.DerivationsPerSecond); testHookDerived, if set, runs after
	// a registration's CIDs are derived, before they are applied.
	derivations     sourceLimiter
	testHookDerived atomic.Pointer[func()]
	initials        initialFilter

	stats relayCounters
	conns *connLimits

	// closeCtx is cancelled when Close starts; connections served by
	// serveConn close with it.
	closeCtx    context.Context
	closeCancel context.CancelFunc
	connMu      sync.Mutex     // orders connWG.Add after closeCancel
	connWG      sync.WaitGroup // serveConn goroutines

	mailbox *mailboxServer // nil if RelayConfig.Mailbox is nil

	// Global forwarding caps; only the forwarding goroutine touches them.
	totalPackets, totalBytes rateLimiter

	// epoch marks this run's CIDs (see RelayCIDGenerator). Packets for
	// earlier runs' CIDs get a stateless reset from resetter (keyed like
	// quic-go's), at most resets per second; only the forwarding goroutine
	// uses them.
	epoch    [3]byte
	resetter hash.Hash
	resets   rateLimiter

	xdp *relayXDP // nil unless RelayConfig.FastPath is set

	serveOnce sync.Once
	closeOnce sync.Once
	closed    chan struct{}
	wg        sync.WaitGroup
	closeErr  error
}

// ListenRelay opens a UDP socket on addr (for example ":4433" or
// "127.0.0.1:0") and returns a Relay that owns it.
func ListenRelay(addr string, cfg *RelayConfig) (*Relay, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("quicpipe: relay address: %w", err)
	}
	conn, err := net.ListenUDP("udp", ua)
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
	tlsConf = http3.ConfigureTLSConfig(tlsConf)
	qconf := &quic.Config{MaxIdleTimeout: 60 * time.Second}
	if c.QUICConfig != nil {
		qconf = c.QUICConfig.Clone()
	}
	if qconf.MaxIncomingStreams == 0 {
		qconf.MaxIncomingStreams = int64(c.MaxStreamsPerConn)
	}
	if qconf.MaxIncomingUniStreams == 0 {
		qconf.MaxIncomingUniStreams = int64(c.MaxStreamsPerConn)
	}
	r := &Relay{
		cfg:    c,
		conn:   conn,
		log:    c.Logger,
		table:  newCIDTable(),
		regs:   make(map[string]*registration),
		follow: make(chan *registration, 64),
		closed: make(chan struct{}),

		perSource: make(map[netip.Prefix]sourceUsage),
		derivations: sourceLimiter{
			rate:    float64(c.DerivationsPerSecond),
			burst:   float64(c.DerivationBurst),
			max:     c.MaxRegistrations,
			buckets: make(map[netip.Prefix]*tokenBucket),
		},
		conns: newConnLimits(c),
	}
	r.closeCtx, r.closeCancel = context.WithCancel(context.Background())
	r.stats.rejected = newRejectCounters(rejectCodes)
	rand.Read(r.epoch[:])
	if c.StatelessResetKey != nil {
		r.resetter = hmac.New(sha256.New, c.StatelessResetKey[:])
	}
	r.rconn = &relayConn{udpSocket: udpSocket{conn}, relay: r}
	if err := r.rconn.io.init(conn); err != nil {
		return nil, fmt.Errorf("quicpipe: relay socket: %w", err)
	}
	// Stateless resets only ever answer packets for the relay's own CIDs:
	// packets for unknown peer CIDs are dropped before quic-go sees them, so
	// a peer connection whose registration lapsed is never reset.
	r.tr = &quic.Transport{
		Conn:                  r.rconn,
		ConnectionIDGenerator: RelayCIDGenerator{Epoch: r.epoch},
		StatelessResetKey:     c.StatelessResetKey,
		ConnContext:           r.connContext,
		VerifySourceAddress:   r.conns.needRetry,
	}
	r.ln, err = r.tr.Listen(tlsConf, qconf)
	if err != nil {
		r.tr.Close()
		return nil, fmt.Errorf("quicpipe: relay listen: %w", err)
	}
	if c.FastPath != nil {
		if err := r.attachXDP(); err != nil {
			r.ln.Close()
			r.tr.Close()
			return nil, err
		}
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
	mux.HandleFunc(RegisterPath, r.handleRegister)
	if c.Mailbox != nil {
		r.mailbox = newMailboxServer(r, c.Mailbox)
		mux.HandleFunc(MailboxPath, r.mailbox.handle)
	}
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, req *http.Request) {
		r.apiError(w, http.StatusNotFound, "not_found", "no such endpoint: "+req.URL.Path)
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

// Addr returns the address the relay listens on.
func (r *Relay) Addr() *net.UDPAddr { return r.conn.LocalAddr().(*net.UDPAddr) }

// Serve serves the registration API and forwards packets until ctx is done
// or Close is called, then closes the relay. It returns nil in both cases,
// and an error if serving failed. Serve may be called once.
func (r *Relay) Serve(ctx context.Context) error {
	err := errors.New("quicpipe: Relay.Serve called twice")
	r.serveOnce.Do(func() {
		err = nil
		r.wg.Go(r.janitor)
		done := make(chan error, 1)
		go func() { done <- r.acceptConns() }()
		r.log.Info("relay serving", "addr", r.Addr().String())
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
		r.connWG.Wait() // connections close with closeCtx, then serveConn returns
		errs = append(errs, r.tr.Close())
		if r.xdp != nil {
			errs = append(errs, r.xdp.prog.Close())
		}
		if r.ownConn {
			errs = append(errs, r.conn.Close())
		}
		r.wg.Wait()
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
	r.log.Info("relay draining")
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for r.registrations() > 0 {
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
	return len(r.regs)
}

// route forwards the datagrams of one batch that belong to peers and
// compacts the others into the lowest slots of ms. It returns how many are
// left for quic-go.
func (r *Relay) route(ms []ipv4.Message, io *batchIO) int {
	now := time.Now().UnixNano()
	io.grow(len(ms))
	io.keep = io.keep[:0]
	var c batchCounts
	var src srcCheck // consecutive datagrams from one source: one lookup
	for i := range ms {
		b := ms[i].Buffers[0][:ms[i].N]
		src.set(io.srcKey(i))
		v, d := r.classify(b, &src, now)
		switch v {
		case forward:
			io.queue(b, d)
			c.fwdBytes += uint64(len(b))
		case toServer:
			io.keep = append(io.keep, i)
		case resetStale:
			if r.queueReset(b, i, io, now) {
				c.resets++
			} else {
				c.drops[v]++
			}
		default:
			c.drops[v]++
		}
	}
	if len(io.keep) < len(ms) {
		sent, failed := io.flush()
		c.fwd += uint64(max(sent-int(c.resets), 0))
		c.sendErrs += uint64(failed)
	}
	// Forwarded datagrams are on the wire: their buffers may now be
	// overwritten by the ones kept for quic-go.
	for j, i := range io.keep {
		addr := io.addr(i)
		if i != j {
			dst, src := &ms[j], &ms[i]
			dst.N = copy(dst.Buffers[0], src.Buffers[0][:src.N])
			dst.NN = copy(dst.OOB, src.OOB[:src.NN])
			dst.Flags = src.Flags
		}
		ms[j].Addr = addr
	}
	c.toServer = uint64(len(io.keep))
	r.stats.add(&c)
	return len(io.keep)
}

// maxResetsPerSecond caps the stateless resets the relay sends.
const maxResetsPerSecond = 1000

// queueReset queues a stateless reset (RFC 9000 section 10.3) answering
// datagram b, received in slot i, which carries a relay CID of an earlier run.
// The reset is shorter than b, so the relay never amplifies, and peers never
// send resets, so resets cannot loop.
func (r *Relay) queueReset(b []byte, i int, io *batchIO, now int64) bool {
	if r.resetter == nil || len(b) < 22 || !r.resets.allow(1, now, maxResetsPerSecond, maxResetsPerSecond) {
		return false
	}
	out := io.resetBuf(i)[:min(len(b)-1, 43)]
	rand.Read(out[:len(out)-16])
	out[0] = 0x40 | out[0]&0x3f // looks like a short-header packet
	r.resetter.Reset()
	r.resetter.Write(b[1 : 1+CIDLen])
	copy(out[len(out)-16:], r.resetter.Sum(io.hmacBuf[:0]))
	io.queueTo(out, i)
	return true
}

// initialFilter remembers the original destination CIDs of Initial packets
// from registered peers that the relay decided to serve, so that the second
// datagram of a two-datagram ClientHello follows the first.
type initialFilter struct {
	mu   sync.Mutex
	seen map[string]int64 // ODCID → expiry (unix nano)
}

const (
	initialFilterMax = 4096
	initialFilterTTL = 10 * time.Second
)

// classifyLongUnknown handles a long-header packet whose DCID is not
// registered: normally a client opening an HTTP/3 connection to the relay.
// A peer's first flight looks the same (its source CID is registered) and
// must never be answered by the relay's server, or the peer would shake hands
// with the relay. A registered peer may also open a new HTTP/3 connection to
// re-register, with the same kind of source CID. The two differ in the ALPN of
// their ClientHello, which the relay reads from the Initial packet (Initial
// protection uses public keys). now is the batch's receive time (unix nano).
func (r *Relay) classifyLongUnknown(b []byte, now int64) verdict {
	hdr, err := wire.ParseLongHeader(b)
	if err != nil || hdr.Type != wire.Initial || len(hdr.SCID) != CIDLen || IsRelayCID(hdr.SCID) {
		return toServer
	}
	if r.table.lookup(hdr.SCID) == nil {
		return toServer
	}
	f := &r.initials
	f.mu.Lock()
	exp, ok := f.seen[string(hdr.DCID)]
	f.mu.Unlock()
	if ok && exp > now {
		return toServer
	}
	info, err := wire.InspectClientInitials([][]byte{b})
	if err != nil || !slices.Contains(info.ALPN, http3.NextProtoH3) {
		return dropPeerInitial
	}
	f.mu.Lock()
	if f.seen == nil {
		f.seen = make(map[string]int64)
	}
	if len(f.seen) >= initialFilterMax {
		for k, e := range f.seen {
			if e <= now {
				delete(f.seen, k)
			}
		}
	}
	if len(f.seen) < initialFilterMax {
		f.seen[string(hdr.DCID)] = now + int64(initialFilterTTL)
	}
	f.mu.Unlock()
	return toServer
}

// localAddrsRefresh is how often the relay reads its host's addresses again.
const localAddrsRefresh = 10 * time.Second

// janitor removes expired registrations and follows registrations whose
// HTTP/3 connection migrated to a new address (a NAT rebinding), at once
// when the forwarding path asks (see wakeFollow).
func (r *Relay) janitor() {
	every := min(max(r.cfg.RegistrationTTL/10, 100*time.Millisecond), 500*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	refresh := time.NewTicker(localAddrsRefresh)
	defer refresh.Stop()
	for {
		select {
		case <-r.closed:
			return
		case <-t.C:
			r.expire(time.Now())
		case reg := <-r.follow:
			r.regMu.Lock()
			if r.regs[reg.key] == reg {
				r.followLocked(reg)
			}
			r.regMu.Unlock()
		case <-refresh.C:
			r.locals.refresh()
		}
	}
}

func (r *Relay) expire(now time.Time) {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	for _, reg := range r.regs {
		if reg.expires.Load() < now.UnixNano() {
			r.removeLocked(reg)
			r.stats.expired.Add(1)
			continue
		}
		r.followLocked(reg)
	}
}

// followLocked moves a registration to the current address of the HTTP/3
// connection that made it, if that connection migrated. quic-go migrates a
// server connection only after validating the new path, so the new address
// is as trustworthy as the one observed at registration. r.regMu must be
// held.
func (r *Relay) followLocked(reg *registration) {
	qc := reg.conn
	if qc == nil || qc.Context().Err() != nil {
		return
	}
	ua, ok := qc.RemoteAddr().(*net.UDPAddr)
	if !ok {
		return
	}
	ap := netAddrPort(ua.AddrPort())
	if ap == reg.dest.Load().ap {
		return
	}
	d, err := r.newDest(ap, reg.local)
	if err != nil {
		r.log.Warn("registration's connection moved to a refused address", "addr", ap.String(), "err", err)
		return
	}
	r.moveSourceLocked(reg, sourceOf(ap.Addr()))
	reg.dest.Store(d)
	r.setTargetLocked(reg, d)
	r.xdpPut(reg.cids, reg)
	r.stats.rebinds.Add(1)
	r.log.Info("registration followed its peer to a new address", "addr", ap.String())
}

// relayCounters are the relay's counters. Forwarding adds to them once per
// batch.
type relayCounters struct {
	forwarded, forwardedBytes, toServer, sendErrors atomic.Uint64
	drops                                           [numVerdicts]atomic.Uint64
	handshakes, expired, registered, rebinds        atomic.Uint64
	resets                                          atomic.Uint64
	rejected                                        rejectCounters
}

// rejectCodes are the codes of refused API requests.
var rejectCodes = []string{
	"bad_method", "bad_json", "body_too_large", "key_length", "num_range",
	"limit_total", "limit_source", "limit_cids", "not_found", "no_address", "closing",
	"unauthorized", "target", "limit_source_cids", "limit_derive", "conflict", "timeout",
}

type batchCounts struct {
	fwd, fwdBytes, toServer, sendErrs, resets uint64
	drops                                     [numVerdicts]uint64
}

func (c *relayCounters) add(b *batchCounts) {
	if b.fwd > 0 {
		c.forwarded.Add(b.fwd)
		c.forwardedBytes.Add(b.fwdBytes)
	}
	if b.toServer > 0 {
		c.toServer.Add(b.toServer)
	}
	if b.sendErrs > 0 {
		c.sendErrors.Add(b.sendErrs)
	}
	if b.resets > 0 {
		c.resets.Add(b.resets)
	}
	for v, n := range b.drops {
		if n > 0 {
			c.drops[v].Add(n)
		}
	}
}

// RelayStats is a snapshot of a relay's counters.
type RelayStats struct {
	// Forwarded and ForwardedBytes count datagrams sent on to peers.
	Forwarded, ForwardedBytes uint64
	// ToServer counts datagrams handed to the relay's HTTP/3 server.
	ToServer uint64
	// Dropped counts datagrams not forwarded, by reason: "unknown_cid"
	// (short header, CID not registered), "expired" (registration lapsed),
	// "peer_initial" (a peer's first flight sent to the relay), "malformed"
	// (too short for a QUIC header), "rate_limit" (over a registration's or
	// the relay's forwarding rate), "stale_cid" (for a connection of an
	// earlier run of the relay, when no reset could be sent),
	// "unknown_source" (for a registered CID, but from an address that no
	// live registration forwards to: spoofed, another relay, or a peer
	// whose NAT rebound and whose registration has not followed yet),
	// "relay_scid" (a long-header packet whose source CID is a relay's:
	// a relay's handshake is never completed through forwarding) and
	// "send_error" (the kernel refused the forwarded datagram, e.g. a full
	// socket buffer).
	Dropped map[string]uint64
	// Handshakes counts HTTP/3 connections accepted.
	Handshakes uint64
	// Registered counts successful registrations and refreshes; Rejected
	// counts refused API requests by the code of their error answer.
	Registered uint64
	Rejected   map[string]uint64
	// Expired counts registrations removed because they were not refreshed.
	Expired uint64
	// Rebinds counts registrations moved to a peer's new address because
	// its HTTP/3 connection migrated or it refreshed from the new address.
	Rebinds uint64
	// Resets counts stateless resets sent to connections of an earlier run
	// of the relay.
	Resets uint64
	// XDP holds the XDP program's counters by outcome ("forwarded_ipv4",
	// "forwarded_ipv6", and the reasons it passed frames to the stack); nil
	// when the relay has no fast path (RelayConfig.FastPath). Its byte
	// counts include Ethernet and IP headers.
	XDP map[string]FastPathStat
	// Registrations and CIDs are the current table sizes.
	Registrations, CIDs int

	// Conns is the number of HTTP/3 connections, established or in their
	// handshake; Handshaking counts those still in their handshake.
	Conns, Handshaking int
	// ConnsRefused counts connections refused at their first packet, by
	// limit: "limit_source" (MaxConnsPerSource), "limit_total" (MaxConns),
	// "limit_handshakes" (MaxHandshakes).
	ConnsRefused map[string]uint64
	// Retries counts connection attempts asked to prove their address with
	// a Retry (see RetryHandshakes).
	Retries uint64
	// IdleClosed counts connections closed after IdleConnTimeout without a
	// request or a live registration.
	IdleClosed uint64
	// HeaderTimeouts counts requests reset because their headers (or, for
	// the API, their body) did not arrive within RequestHeaderTimeout.
	HeaderTimeouts uint64
}

// Stats returns a snapshot of the relay's counters.
func (r *Relay) Stats() RelayStats {
	c := &r.stats
	s := RelayStats{
		Forwarded:      c.forwarded.Load(),
		ForwardedBytes: c.forwardedBytes.Load(),
		ToServer:       c.toServer.Load(),
		Handshakes:     c.handshakes.Load(),
		Registered:     c.registered.Load(),
		Expired:        c.expired.Load(),
		Rebinds:        c.rebinds.Load(),
		Resets:         c.resets.Load(),
		CIDs:           int(r.table.size.Load()),
		Dropped: map[string]uint64{
			"unknown_cid":    c.drops[dropUnknown].Load(),
			"expired":        c.drops[dropExpired].Load(),
			"peer_initial":   c.drops[dropPeerInitial].Load(),
			"malformed":      c.drops[dropMalformed].Load(),
			"rate_limit":     c.drops[dropRateLimited].Load(),
			"stale_cid":      c.drops[resetStale].Load(),
			"unknown_source": c.drops[dropUnknownSource].Load(),
			"relay_scid":     c.drops[dropRelaySCID].Load(),
			"send_error":     c.sendErrors.Load(),
		},
		Rejected: c.rejected.snapshot(),
	}
	s.Registrations = r.registrations()
	s.Conns, s.Handshaking = r.conns.counts()
	s.ConnsRefused = r.conns.refused.snapshot()
	s.Retries = r.conns.retries.Load()
	s.IdleClosed = r.conns.idleClosed.Load()
	s.HeaderTimeouts = r.conns.headerTimeouts.Load()
	s.XDP = r.xdpStats()
	return s
}

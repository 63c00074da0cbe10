package quicpipe

import (
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/quic-go/quic-go"
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
	// defaults are used with a 60s idle timeout. Receive windows left zero
	// start small (32 KiB per stream and 64 KiB per connection).
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
	// forwards in total (userspace and the fast path each apply them to what
	// they forward). As for the per-registration caps, zero selects the
	// default and a negative value means unlimited; the default here is
	// unlimited.
	MaxTotalPacketsPerSecond, MaxTotalBytesPerSecond int64
	// StatelessResetKey lets the relay reset, after a restart, the HTTP/3
	// connections of peers registered before it, so that they notice at once
	// and register again. It must stay the same across restarts. If nil and
	// Identity is set, a key derived from Identity is used; otherwise resets
	// are off. Packets for peers' CIDs never cause a reset.
	StatelessResetKey *quic.StatelessResetKey
	// Mailbox, if not nil, turns on the mailbox API (/v1/mailbox/, see
	// relay_mailbox.go): an accepter holds a mailbox named by its public key and
	// dialers post their first flights to it. If nil, the mailbox is off and
	// its paths answer 404.
	Mailbox *MailboxConfig
	// MailboxRouter, if not nil, makes the mailbox span a relay fleet (see
	// MailboxRouter and package fleet): the relay tells it which mailboxes
	// it holds, and hands it the posts for mailboxes it does not hold,
	// which another member may hold. If nil, a post for a mailbox this
	// relay does not hold is refused (CodeNoMailbox), as a single relay
	// does. It has no effect while Mailbox is nil.
	MailboxRouter MailboxRouter
	// DisableSleep turns off sleeping listeners (docs/decisions/
	// 0029-idle-peers.md): an accepter with its mailbox open and no pipe
	// may otherwise ask the relay to keep its registration and mailbox
	// without its connection, alive with keep-alive datagrams. If false
	// (the default), a relay with a Mailbox offers sleep; in a fleet
	// (MailboxRouter set) a sleeping mailbox keeps its hold, so that dials
	// posted at other members wake it.
	DisableSleep bool
	// SleepKeepAlive is how often a sleeping listener sends a keep-alive;
	// the relay forgets a sleeper, its mailbox and its registration after
	// three missed (3.5 intervals). If zero, 25s is used (below common
	// 30-second UDP NAT timeouts).
	SleepKeepAlive time.Duration
	// MaxSleepers bounds the sleeping listeners in total, and
	// MaxSleepersPerSource those of one source (an IPv4 address or an
	// IPv6 /64); a listener over either stays awake. Each sleeper also
	// holds a registration and a mailbox, bounded by their own limits. If
	// zero, MaxRegistrations and MaxRegistrationsPerSource are used.
	MaxSleepers, MaxSleepersPerSource int
	// FastPath, if not nil, starts a kernel fast path (see FastPath) once
	// the relay's socket is bound, for example relayxdp.New's XDP program
	// (Linux only); NewRelay fails with its error. If nil, every packet is
	// forwarded in userspace.
	FastPath func(FastPathConfig) (FastPath, error)
	// Replicator, if not nil, is told of every change to the relay's own
	// registrations (created, moved to a new address, window slid,
	// removed), never of a plain refresh, so that it can share them with
	// the other members of a relay fleet (see Replicator and package
	// fleet). If nil, the relay keeps its table to itself, as a single
	// relay does.
	Replicator Replicator
	// Tunnel, if not nil, turns on the tunnel for peers whose UDP is
	// blocked: a TCP listener with TLS and a WebSocket upgrade whose
	// datagrams the relay handles as if they had reached its UDP socket
	// (see TunnelConfig). If nil, the relay listens on UDP only.
	Tunnel *TunnelConfig
	// ProbeConns, if not empty, are UDP sockets on which the relay answers
	// address probes: each request gets back the address and port it came
	// from (docs/PROTOCOL.md, "Address probes"). Two sockets, on two ports
	// or better two addresses, let a client (quicpipe doctor) tell whether
	// its NAT maps one socket to one public address for every
	// destination. The caller keeps ownership of the sockets: Close stops
	// reading them (it sets a read deadline) but does not close them. If
	// empty, the relay answers no probes.
	ProbeConns []*net.UDPConn
	// ProbeRate bounds the probes answered per second in total, and
	// ProbeRatePerSource those of one source (an IPv4 address or an IPv6
	// /64), each a token bucket with a one-second burst; requests over
	// either are dropped (ProbeStats.Limited). A reply is never larger than
	// its request. If zero, 2000 and 20 are used.
	ProbeRate, ProbeRatePerSource int
	// Readers is the number of forwarding readers of the relay's UDP port:
	// sockets bound to its address with SO_REUSEPORT (Linux), each read
	// and forwarded by its own goroutine, so that forwarding uses that many
	// cores. The kernel hashes each sender's address to one socket, and a
	// reader sends from its socket, the same address and port. Datagrams
	// for the relay's HTTP/3 server are handed to its one QUIC transport.
	// If zero, one per CPU (runtime.GOMAXPROCS when the relay starts), at
	// most 64. 1 reads the one socket. More than one needs a socket with
	// SO_REUSEPORT set before it was bound: ListenRelay sets it; with a
	// socket from NewRelay's caller that lacks it, zero selects one reader
	// and a number above 1 is an error. Beware that SO_REUSEPORT lets
	// another process of the same user bind the port too. Outside Linux,
	// there is one reader.
	Readers int
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
	if cfg.ProbeRate == 0 {
		cfg.ProbeRate = defaultProbeRate
	}
	if cfg.ProbeRatePerSource == 0 {
		cfg.ProbeRatePerSource = defaultProbeRatePerSource
	}
	if cfg.ProbeRate < 0 || cfg.ProbeRatePerSource < 0 {
		return nil, errors.New("quicpipe: RelayConfig.ProbeRate and ProbeRatePerSource must not be negative")
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
	if cfg.SleepKeepAlive == 0 {
		cfg.SleepKeepAlive = defaultSleepKeepAlive
	}
	if cfg.MaxSleepers == 0 {
		cfg.MaxSleepers = cfg.MaxRegistrations
	}
	if cfg.MaxSleepersPerSource == 0 {
		cfg.MaxSleepersPerSource = cfg.MaxRegistrationsPerSource
	}
	if cfg.StatelessResetKey == nil && cfg.Identity != nil {
		k := statelessResetKeyFromIdentity(cfg.Identity)
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
	case cfg.Readers < 0 || cfg.Readers > maxReaders:
		return nil, fmt.Errorf("quicpipe: RelayConfig.Readers %d is outside 0 to %d", cfg.Readers, maxReaders)
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
	case cfg.SleepKeepAlive < 100*time.Millisecond || cfg.MaxSleepers < 1 || cfg.MaxSleepersPerSource < 1:
		return nil, errors.New("quicpipe: RelayConfig.SleepKeepAlive must be at least 100ms, MaxSleepers and MaxSleepersPerSource positive")
	case cfg.MaxConnsPerSource < 1, cfg.MaxConns < 1, cfg.MaxHandshakes < 1, cfg.MaxStreamsPerConn < 1,
		cfg.RequestHeaderTimeout < 0, cfg.IdleConnTimeout < 0:
		return nil, errors.New("quicpipe: RelayConfig connection limits and timeouts must be positive")
	}
	return &cfg, nil
}

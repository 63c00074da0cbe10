package quicpipe

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"

	"github.com/quic-go/quic-go"
)

// Config configures a Dialer or an Accepter. The zero value of each optional
// field selects the documented default; the library never modifies a Config
// it is given.
type Config struct {
	// RelayAddr is the relay's UDP address, "host:port". Required.
	RelayAddr string
	// RelayKey is the relay's pinned Ed25519 public key. Required unless
	// RelayTLSConfig is set.
	RelayKey ed25519.PublicKey
	// RelayToken, if not empty, is sent as "Authorization: Bearer <token>"
	// with every request to the relay (see TokenAuthorizer and NewToken).
	RelayToken string
	// RelayTLSConfig, if not nil, replaces the TLS configuration built from
	// RelayKey for the HTTP/3 connection to the relay (for example to verify
	// a CA-issued relay certificate). It is cloned and its NextProtos set to
	// HTTP/3's.
	RelayTLSConfig *tls.Config

	// Identity is this peer's Ed25519 private key; the other peer pins its
	// public key. Required.
	Identity ed25519.PrivateKey
	// TrustedPeers lists the public keys of the dialers an Accepter accepts.
	// Required for an Accepter; a Dialer names its peer on each Dial.
	TrustedPeers []ed25519.PublicKey

	// CIDKey is the secret from which this peer's connection IDs are derived
	// (MinCIDKeyLen to MaxCIDKeyLen bytes). If nil, a random 32-byte key is
	// used, which is what almost every application wants.
	CIDKey []byte

	// Conn, if not nil, is the UDP socket to use. The caller keeps
	// ownership: Close does not close it, but nothing else may read from it
	// until then. If nil, a socket is opened on ListenAddr and closed by
	// Close.
	Conn *net.UDPConn
	// ListenAddr is the local address of the socket opened when Conn is nil.
	// If empty, an ephemeral port on the unspecified address of the relay's
	// family is used.
	ListenAddr string

	// QUICConfig configures the peer connections. It is cloned, and
	// quic-go's defaults apply to every field left zero, except these,
	// which Quicpipe sets whether QUICConfig is nil or not:
	//   - KeepAlivePeriod: if zero, 15s (keep-alives cannot be turned off:
	//     they hold the NAT mappings towards the relay open);
	//   - MaxIdleTimeout: if zero, 90s, so that a connection outlives a
	//     relay restart or a NAT rebinding;
	//   - DisablePathMTUDiscovery: always true (relayed paths must not
	//     probe);
	//   - HandshakeIdleTimeout: replaced for each handshake, which may last
	//     as long as the Dial or Accept context allows.
	// GetConfigForClient must be nil.
	QUICConfig *quic.Config

	// RegistrationWindow is how many CIDs are registered with the relay
	// ahead of the last one issued. If zero, 64 is used; otherwise it must
	// be between 8 and 4096 (NewDialer and NewAccepter refuse other
	// values).
	RegistrationWindow int
	// RelayTimeout bounds each exchange with the relay (handshake and one
	// registration request). If zero, 10s is used.
	RelayTimeout time.Duration
	// RelayKeepAlive is how often the peer sends a keep-alive on its
	// connection to the relay when idle. It bounds how long a NAT rebinding
	// or a relay restart goes unnoticed. If zero, 2s is used.
	RelayKeepAlive time.Duration

	// SleepAfter is how long an Accepter with its mailbox open, no
	// connection open and no Accept in progress waits before it sleeps,
	// if its relay offers sleep (docs/decisions/0029-idle-peers.md): it
	// closes its connection to the relay, which keeps its registration
	// and mailbox alive on small keep-alive datagrams from its socket. A
	// dial through the mailbox wakes it with the dialer's first flight
	// (no extra round trip); it then reconnects in the background and
	// sleeps again once idle. Dialers never sleep, nor does an Accepter
	// whose relay is reached through the tunnel. If zero, 30s is used; if
	// negative, the Accepter never sleeps.
	SleepAfter time.Duration

	// DisableDirect keeps every connection on the relay. If false (the
	// default), the peers exchange their addresses over each connection,
	// probe for a direct UDP path, move the connection onto it while it
	// works and back to the relay when it stops (see Dialer.Path).
	DisableDirect bool
	// DirectAnyScope lets direct paths use addresses of any scope. If
	// false (the default), a peer offers and probes only addresses within
	// the scope of the relay's address (loopback, link-local, private,
	// global; see docs/NAT.md, "Candidate scope"): with a loopback relay
	// the connection stays on loopback, with a relay on a private address
	// it never tries a public one.
	DirectAnyScope bool
	// OnPathChange, if not nil, is called whenever a connection moves
	// between the relay and a direct path (or between direct paths), and
	// when a search for a direct path ends without one for a new reason
	// (PathInfo.Reason): the first such call means the relay is the
	// path until the next retry finds better. Calls
	// come from one goroutine of the Dialer or Accepter, one at a time, in
	// order; a slow callback delays later calls, never the connections.
	OnPathChange func(conn *quic.Conn, path PathInfo)

	// InterfaceAddrs, if not nil, lists the addresses of this host's
	// interfaces that a peer offers as direct-path candidates (with its
	// socket's port), when its socket is bound to the unspecified address.
	// If nil, net.InterfaceAddrs is used: the interfaces of the network
	// namespace of the calling thread. Set it when that is not where the
	// socket lives (a Config.Conn opened in another Linux network
	// namespace), or to offer fewer addresses. Loopback addresses and those
	// outside the relay's family or scope are never offered.
	InterfaceAddrs func() ([]netip.Addr, error)
	// PortMapping configures port mapping: unless PortMapping.Disable is
	// set, a peer with direct paths on asks its gateway to forward its
	// socket's port (PCP, NAT-PMP or UPnP) and offers the forwarded public
	// address as a direct-path candidate, the mapping removed on Close.
	// The zero value turns it on (see PortMappingConfig).
	PortMapping PortMappingConfig

	// Tunnel selects how the peer reaches its relay where UDP may be
	// blocked (docs/decisions/0025-tunnel.md). The zero value, TunnelAuto,
	// sends over UDP first and opens the relay's TLS/WebSocket tunnel too
	// if the relay has not answered within TunnelDelay, keeping whichever
	// answers first; TunnelOff never opens it; TunnelOnly uses only the
	// tunnel. Direct paths between peers are tried over UDP either way.
	Tunnel TunnelMode
	// TunnelURL is the relay's tunnel, "wss://host:port/path"; a part left
	// out is filled in from "wss://<RelayAddr's host>:443/v1/tunnel", which
	// is used if TunnelURL is empty. A ticket carries the URL its relay
	// announced (Ticket.TunnelURL, Registration.TunnelURL).
	TunnelURL string
	// TunnelDelay is how long UDP alone has to get an answer from the relay
	// before TunnelAuto opens the tunnel. If zero, 300ms is used.
	TunnelDelay time.Duration
	// TunnelRootCAs verifies the tunnel's outer TLS certificate when it is
	// not the relay's own (the one holding RelayKey): a CA-issued
	// certificate, or that of a TLS-inspecting proxy. If nil, the system's
	// roots are used. The relay is authenticated by RelayKey inside the
	// tunnel whichever certificate the outer TLS shows.
	TunnelRootCAs *x509.CertPool
	// TunnelProxy returns the HTTP proxy through which to open the tunnel
	// (HTTP CONNECT), or nil for none. If nil, http.ProxyFromEnvironment is
	// used (HTTPS_PROXY, NO_PROXY).
	TunnelProxy func(*http.Request) (*url.URL, error)
	// TunnelDialContext, if not nil, opens the tunnel's TCP connections (to
	// the relay, or to the proxy). If nil, a net.Dialer's is used.
	TunnelDialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnRelayTransport, if not nil, is told which transport reaches the
	// relay: with TunnelAuto when the race between UDP and the tunnel is
	// decided (from a goroutine of its own), with TunnelOnly once the
	// tunnel is open, before NewDialer or NewAccepter returns; never with
	// TunnelOff (always UDP).
	OnRelayTransport func(Transport)

	// Logger receives logs. If nil, nothing is logged.
	Logger *slog.Logger
}

// Defaults and limits of Config's fields (see their documentation).
const (
	defaultRegistrationWindow = 64
	minRegistrationWindow     = 8
	maxRegistrationWindow     = 4096
	defaultRelayTimeout       = 10 * time.Second
	defaultRelayKeepAlive     = 2 * time.Second
	defaultSleepAfter         = 30 * time.Second
	defaultPeerKeepAlive      = 15 * time.Second
	defaultPeerIdleTimeout    = 90 * time.Second
)

func populateConfig(c *Config, accepter bool) (*Config, error) {
	if c == nil {
		return nil, errors.New("quicpipe: nil Config")
	}
	cfg := *c
	if cfg.RelayAddr == "" {
		return nil, errors.New("quicpipe: Config.RelayAddr is required")
	}
	if cfg.RelayTLSConfig == nil && len(cfg.RelayKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("quicpipe: Config.RelayKey must be a %d-byte Ed25519 public key, got %d bytes",
			ed25519.PublicKeySize, len(cfg.RelayKey))
	}
	if len(cfg.Identity) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("quicpipe: Config.Identity must be a %d-byte Ed25519 private key, got %d bytes",
			ed25519.PrivateKeySize, len(cfg.Identity))
	}
	if accepter && len(cfg.TrustedPeers) == 0 {
		return nil, errors.New("quicpipe: Config.TrustedPeers is required for an Accepter")
	}
	for i, k := range cfg.TrustedPeers {
		if len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("quicpipe: Config.TrustedPeers[%d] must be a %d-byte Ed25519 public key, got %d bytes",
				i, ed25519.PublicKeySize, len(k))
		}
	}
	if cfg.CIDKey == nil {
		cfg.CIDKey = newCIDKey()
	} else if len(cfg.CIDKey) < MinCIDKeyLen || len(cfg.CIDKey) > MaxCIDKeyLen {
		return nil, fmt.Errorf("quicpipe: Config.CIDKey is %d bytes: %w", len(cfg.CIDKey), ErrCIDKeyLength)
	}
	if cfg.RegistrationWindow == 0 {
		cfg.RegistrationWindow = defaultRegistrationWindow
	}
	switch {
	case cfg.Tunnel < TunnelAuto || cfg.Tunnel > TunnelOnly:
		return nil, fmt.Errorf("quicpipe: Config.Tunnel %d is no TunnelMode", int(cfg.Tunnel))
	case cfg.TunnelDelay < 0:
		return nil, errors.New("quicpipe: Config.TunnelDelay is negative")
	}
	if cfg.TunnelDelay == 0 {
		cfg.TunnelDelay = defaultTunnelDelay
	}
	if cfg.TunnelProxy == nil {
		cfg.TunnelProxy = http.ProxyFromEnvironment
	}
	if cfg.Tunnel != TunnelOff {
		if _, err := tunnelURL(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.RegistrationWindow < minRegistrationWindow || cfg.RegistrationWindow > maxRegistrationWindow {
		return nil, fmt.Errorf("quicpipe: Config.RegistrationWindow %d is outside %d..%d",
			cfg.RegistrationWindow, minRegistrationWindow, maxRegistrationWindow)
	}
	if cfg.QUICConfig != nil && cfg.QUICConfig.GetConfigForClient != nil {
		// quic-go would take the configuration it returns, without the
		// Tracer that ties an accepted connection to its first flight and
		// keeps its CIDs registered.
		return nil, errors.New("quicpipe: Config.QUICConfig.GetConfigForClient is not supported")
	}
	if cfg.RelayTimeout == 0 {
		cfg.RelayTimeout = defaultRelayTimeout
	}
	if cfg.RelayKeepAlive == 0 {
		cfg.RelayKeepAlive = defaultRelayKeepAlive
	}
	if cfg.SleepAfter == 0 {
		cfg.SleepAfter = defaultSleepAfter
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &cfg, nil
}

// peerQUICConfig returns the QUIC configuration of a peer connection.
func (c *Config) peerQUICConfig() *quic.Config {
	var q *quic.Config
	if c.QUICConfig != nil {
		q = c.QUICConfig.Clone()
	} else {
		q = &quic.Config{}
	}
	q.DisablePathMTUDiscovery = true
	if q.KeepAlivePeriod == 0 {
		q.KeepAlivePeriod = defaultPeerKeepAlive
	}
	// A pipe must outlive a relay restart or a NAT rebinding: QUIC's
	// exponential probe backoff takes about twice the outage to notice that
	// the path works again, and the idle timeout must not end it first.
	if q.MaxIdleTimeout == 0 {
		q.MaxIdleTimeout = defaultPeerIdleTimeout
	}
	return q
}

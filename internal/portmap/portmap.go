// Package portmap asks the local network's gateway to forward a UDP port:
// a port mapping, with UPnP-IGD, NAT-PMP (RFC 6886) or PCP (RFC 6887).
//
// A Client probes the gateway with all three protocols at once, maps the
// port with the first it prefers among those that answered (PCP, then
// NAT-PMP, then UPnP), renews the mapping before it expires and removes it
// when closed. A peer behind an endpoint-dependent NAT that grants a
// mapping can be reached at the mapped address by anyone.
package portmap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Protocol is a port-mapping protocol.
type Protocol uint8

// The protocols, in the Client's order of preference.
const (
	PCP    Protocol = 1 // Port Control Protocol, RFC 6887
	NATPMP Protocol = 2 // NAT Port Mapping Protocol, RFC 6886
	UPnP   Protocol = 3 // UPnP Internet Gateway Device, WANIPConnection
)

// String returns the protocol's usual name: "PCP", "NAT-PMP" or "UPnP".
func (p Protocol) String() string {
	switch p {
	case PCP:
		return "PCP"
	case NATPMP:
		return "NAT-PMP"
	case UPnP:
		return "UPnP"
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// Defaults of Config's fields.
const (
	DefaultLifetime     = 2 * time.Hour
	DefaultProbeTimeout = 250 * time.Millisecond
	DefaultMapTimeout   = 2 * time.Second
	DefaultRetry        = 5 * time.Minute
	minLifetime         = 30 * time.Second
)

// ErrNoGateway means no gateway answered any of the protocols probed.
var ErrNoGateway = errors.New("portmap: no gateway answered PCP, NAT-PMP or UPnP")

// ErrNoDefaultGateway means Config.Gateway was not set and the routing
// table has no default IPv4 route.
var ErrNoDefaultGateway = errors.New("portmap: no default IPv4 route")

// Config configures a Client. The zero value of each optional field
// selects the documented default.
type Config struct {
	// InternalPort is the local UDP port to map. Required.
	InternalPort uint16
	// Gateway is the gateway's IPv4 address. If not valid, the system's
	// default IPv4 gateway is used (read from the routing table; on
	// systems where this package cannot read it, Start fails).
	Gateway netip.Addr
	// Protocols lists the protocols to try. If empty, all three.
	Protocols []Protocol
	// Lifetime is the lifetime asked for the mapping; the Client renews it
	// at half its granted lifetime. If zero, DefaultLifetime (2 hours, as
	// RFC 6886 recommends); at least 30 seconds.
	Lifetime time.Duration
	// ProbeTimeout bounds the probe: how long the Client waits for the
	// gateway's first answer to each protocol. If zero,
	// DefaultProbeTimeout (250 ms).
	ProbeTimeout time.Duration
	// MapTimeout bounds one request for, renewal or removal of a mapping
	// (with UPnP, a few HTTP exchanges). If zero, DefaultMapTimeout (2 s).
	MapTimeout time.Duration
	// Retry is how long the Client waits, after a probe that found no
	// gateway or a mapping that could not be kept, before probing again.
	// If zero, DefaultRetry (5 minutes).
	Retry time.Duration
	// DialContext, if not nil, opens the Client's connections to the
	// gateway: connected UDP for PCP and NAT-PMP, TCP for UPnP's HTTP. It
	// must open them where the mapped socket lives (its network namespace
	// on Linux). If nil, a net.Dialer is used.
	DialContext func(ctx context.Context, network, address string) (net.Conn, error)
	// ListenPacket, if not nil, opens the unconnected UDP socket of UPnP's
	// discovery (its answers may come from another port than the one
	// searched), in the same place as DialContext. If nil, a
	// net.ListenConfig is used.
	ListenPacket func(ctx context.Context, network, address string) (net.PacketConn, error)
	// OnChange, if not nil, is called from the Client's goroutine when the
	// mapping appears, changes address or disappears (ok false).
	OnChange func(m Mapping, ok bool)
	// Logger receives logs. If nil, nothing is logged.
	Logger *slog.Logger

	// pmpPort and ssdpPort replace the gateway's ports 5351 and 1900
	// (tests).
	pmpPort, ssdpPort uint16
}

// Mapping is a port mapping granted by the gateway.
type Mapping struct {
	// Protocol is the protocol that obtained it.
	Protocol Protocol
	// External is the gateway's external address and port that forward
	// to the internal port.
	External netip.AddrPort
	// Expires is when the gateway forgets it unless renewed; zero for a
	// UPnP mapping granted without an expiry (removed on Close).
	Expires time.Time
}

// Stats counts a Client's work.
type Stats struct {
	// Probes counts probes of the gateway (each covering every protocol).
	Probes uint64
	// Mapped counts mappings obtained; Renewed, successful renewals.
	Mapped, Renewed uint64
	// Failures counts requests (probe, map, renew, remove) that failed:
	// no answer, a refusal or an error.
	Failures uint64
	// BadReplies counts datagrams from the gateway that were malformed or
	// answered another request, and UPnP answers that could not be used.
	BadReplies uint64
}

// Client holds one port mapping. Its methods may be called concurrently.
type Client struct {
	cfg    Config
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}
	ready  chan struct{}

	mu  sync.Mutex
	cur Mapping
	ok  bool
	// removeCtx bounds the removal of the mapping (set by CloseContext);
	// closeErr is the removal's error.
	removeCtx context.Context
	closeErr  error

	probes, mapped, renewed, failures, bad atomic.Uint64
}

// mapper speaks one protocol to the gateway.
type mapper interface {
	// probe reports whether the gateway speaks the protocol.
	probe(ctx context.Context) error
	// mapPort asks for the mapping, or renews it. A lifetime of zero from
	// a UPnP gateway means no expiry.
	mapPort(ctx context.Context, life time.Duration) (netip.AddrPort, time.Duration, error)
	// unmap removes the mapping.
	unmap(ctx context.Context) error
	// close releases the mapper's sockets.
	close()
}

// Start checks cfg and starts a Client, which probes the gateway in the
// background; Ready is closed when the first probe has ended.
func Start(cfg Config) (*Client, error) {
	if cfg.InternalPort == 0 {
		return nil, errors.New("portmap: Config.InternalPort is required")
	}
	if cfg.Lifetime == 0 {
		cfg.Lifetime = DefaultLifetime
	}
	if cfg.Lifetime < minLifetime {
		return nil, fmt.Errorf("portmap: Config.Lifetime %v is below %v", cfg.Lifetime, minLifetime)
	}
	if cfg.Retry <= 0 {
		cfg.Retry = DefaultRetry
	}
	c, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.run(ctx)
	return c, nil
}

// newClient checks the fields of cfg that probing uses, fills in their
// defaults, and returns a Client that is not running.
func newClient(cfg Config) (*Client, error) {
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	if cfg.MapTimeout <= 0 {
		cfg.MapTimeout = DefaultMapTimeout
	}
	if len(cfg.Protocols) == 0 {
		cfg.Protocols = []Protocol{PCP, NATPMP, UPnP}
	}
	for _, p := range cfg.Protocols {
		if p < PCP || p > UPnP {
			return nil, fmt.Errorf("portmap: unknown protocol %v", p)
		}
	}
	if !cfg.Gateway.IsValid() {
		gw, err := defaultGateway()
		if err != nil {
			return nil, fmt.Errorf("portmap: finding the default gateway: %w", err)
		}
		cfg.Gateway = gw
	}
	cfg.Gateway = cfg.Gateway.Unmap()
	if !cfg.Gateway.Is4() {
		return nil, fmt.Errorf("portmap: gateway %v is not an IPv4 address", cfg.Gateway)
	}
	if cfg.pmpPort == 0 {
		cfg.pmpPort = pmpPort
	}
	if cfg.ssdpPort == 0 {
		cfg.ssdpPort = ssdpPort
	}
	if cfg.DialContext == nil {
		var d net.Dialer
		cfg.DialContext = d.DialContext
	}
	if cfg.ListenPacket == nil {
		var lc net.ListenConfig
		cfg.ListenPacket = lc.ListenPacket
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{
		cfg:   cfg,
		log:   log.With("gateway", cfg.Gateway, "port", cfg.InternalPort),
		done:  make(chan struct{}),
		ready: make(chan struct{}),
	}, nil
}

// ProbeResult is what Probe found.
type ProbeResult struct {
	// Gateway is the gateway probed: Config.Gateway, or the default
	// gateway if that was not set.
	Gateway netip.Addr
	// Protocols lists the protocols the gateway answered, in the
	// Client's order of preference; empty if it answered none.
	Protocols []Protocol
	// Err says why each protocol probed that is not in Protocols did not
	// answer; nil if every one answered.
	Err error
}

// Probe asks the gateway whether it speaks each protocol of
// cfg.Protocols, all at once, as a Client does before it maps, and maps
// nothing: PCP's ANNOUNCE, NAT-PMP's external address request and UPnP's
// SSDP search create no state on the gateway. It waits at most
// cfg.ProbeTimeout (and ctx) for the answers. Of cfg, it uses Gateway,
// Protocols, ProbeTimeout, DialContext, ListenPacket and Logger;
// InternalPort may be zero.
//
// Probe returns an error only when it could not probe: no default gateway
// (the error wraps ErrNoDefaultGateway), a gateway that is not IPv4, no
// route to it, or ctx ended. A gateway that answers nothing is a result
// with no Protocols.
func Probe(ctx context.Context, cfg Config) (ProbeResult, error) {
	c, err := newClient(cfg)
	if err != nil {
		return ProbeResult{}, err
	}
	found, errs, err := c.probe(ctx)
	if err != nil {
		return ProbeResult{}, err
	}
	res := ProbeResult{Gateway: c.cfg.Gateway, Err: errors.Join(errs...)}
	for _, p := range []Protocol{PCP, NATPMP, UPnP} {
		if m, ok := found[p]; ok {
			m.close()
			res.Protocols = append(res.Protocols, p)
		}
	}
	if err := ctx.Err(); err != nil {
		return ProbeResult{}, err
	}
	return res, nil
}

// Ready is closed once the first probe has ended, with a mapping or not.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Mapping returns the current mapping; ok is false if there is none.
func (c *Client) Mapping() (m Mapping, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur, c.ok
}

// Stats returns the Client's counters.
func (c *Client) Stats() Stats {
	return Stats{
		Probes:     c.probes.Load(),
		Mapped:     c.mapped.Load(),
		Renewed:    c.renewed.Load(),
		Failures:   c.failures.Load(),
		BadReplies: c.bad.Load(),
	}
}

// Close stops the Client and removes its mapping from the gateway, waiting
// at most Config.MapTimeout for the gateway's answer. It returns nil
// unless the removal failed.
func (c *Client) Close() error { return c.CloseContext(context.Background()) }

// CloseContext is Close, the wait for the gateway's answer also bounded by
// ctx. Only the first call removes the mapping.
func (c *Client) CloseContext(ctx context.Context) error {
	c.mu.Lock()
	if c.removeCtx == nil {
		c.removeCtx = ctx
	}
	c.mu.Unlock()
	c.cancel()
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeErr
}

func (c *Client) set(m Mapping, ok bool) {
	c.mu.Lock()
	changed := ok != c.ok || m.External != c.cur.External || m.Protocol != c.cur.Protocol
	c.cur, c.ok = m, ok
	c.mu.Unlock()
	if changed && c.cfg.OnChange != nil {
		c.cfg.OnChange(m, ok)
	}
}

// run probes, maps, renews, and when ctx ends removes the mapping.
func (c *Client) run(ctx context.Context) {
	defer close(c.done)
	readyOnce := sync.OnceFunc(func() { close(c.ready) })
	defer readyOnce()
	for {
		m, p, err := c.obtain(ctx)
		readyOnce()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log.Debug("no port mapping", "err", err)
			if !sleep(ctx, c.cfg.Retry) {
				return
			}
			continue
		}
		c.maintain(ctx, m, p)
		m.close()
		if ctx.Err() != nil {
			return
		}
		if !sleep(ctx, c.cfg.Retry) {
			return
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// obtain probes every protocol at once and maps the port with the
// preferred one among those that answered.
func (c *Client) obtain(ctx context.Context) (mapper, Mapping, error) {
	found, errs, err := c.probe(ctx)
	if err != nil {
		return nil, Mapping{}, err
	}
	defer func() {
		for _, m := range found {
			m.close()
		}
	}()
	if len(found) == 0 {
		return nil, Mapping{}, errors.Join(append([]error{ErrNoGateway}, errs...)...)
	}
	for _, p := range []Protocol{PCP, NATPMP, UPnP} {
		m, ok := found[p]
		if !ok {
			continue
		}
		mctx, cancel := context.WithTimeout(ctx, c.cfg.MapTimeout)
		ext, life, err := m.mapPort(mctx, c.cfg.Lifetime)
		cancel()
		if err != nil {
			c.failures.Add(1)
			errs = append(errs, fmt.Errorf("%v: mapping: %w", p, err))
			c.log.Debug("port mapping refused", "protocol", p, "err", err)
			continue
		}
		delete(found, p)
		c.mapped.Add(1)
		mp := Mapping{Protocol: p, External: ext}
		if life > 0 {
			mp.Expires = time.Now().Add(life)
		}
		c.log.Info("port mapped", "protocol", p, "external", ext, "lifetime", life)
		return m, mp, nil
	}
	return nil, Mapping{}, errors.Join(errs...)
}

// probe probes every protocol at once, waiting at most ProbeTimeout. It
// returns the mappers of the protocols that answered, which the caller
// closes, and why the others did not; err is set only if it could not
// probe at all.
func (c *Client) probe(ctx context.Context) (found map[Protocol]mapper, errs []error, err error) {
	c.probes.Add(1)
	local, err := c.localAddr(ctx)
	if err != nil {
		c.failures.Add(1)
		return nil, nil, err
	}
	type result struct {
		p   Protocol
		m   mapper
		err error
	}
	results := make(chan result, len(c.cfg.Protocols))
	pctx, cancel := context.WithTimeout(ctx, c.cfg.ProbeTimeout)
	defer cancel()
	for _, p := range c.cfg.Protocols {
		go func() {
			m, err := c.newMapper(pctx, p, local)
			if err == nil {
				if err = m.probe(pctx); err != nil {
					m.close()
				}
			}
			results <- result{p, m, err}
		}()
	}
	found = make(map[Protocol]mapper)
	for range c.cfg.Protocols {
		r := <-results
		if r.err != nil {
			c.failures.Add(1)
			errs = append(errs, fmt.Errorf("%v: %w", r.p, r.err))
			continue
		}
		found[r.p] = r.m
	}
	return found, errs, nil
}

// localAddr returns this host's address towards the gateway.
func (c *Client) localAddr(ctx context.Context) (netip.Addr, error) {
	conn, err := c.cfg.DialContext(ctx, "udp4", netip.AddrPortFrom(c.cfg.Gateway, c.cfg.pmpPort).String())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("portmap: no route to the gateway: %w", err)
	}
	defer conn.Close()
	ua, ok := conn.LocalAddr().(*net.UDPAddr)
	if !ok {
		return netip.Addr{}, fmt.Errorf("portmap: local address %v is not a UDP address", conn.LocalAddr())
	}
	return ua.AddrPort().Addr().Unmap(), nil
}

func (c *Client) newMapper(ctx context.Context, p Protocol, local netip.Addr) (mapper, error) {
	switch p {
	case PCP:
		return newPCPMapper(ctx, c, local)
	case NATPMP:
		return newPMPMapper(ctx, c)
	}
	return newUPnPMapper(c, local), nil
}

// maintain keeps mapping m alive until ctx ends (then removes it) or it
// cannot be renewed before it expires.
func (c *Client) maintain(ctx context.Context, m mapper, mp Mapping) {
	c.set(mp, true)
	renewAt := func(mp Mapping) time.Duration {
		if mp.Expires.IsZero() {
			return c.cfg.Lifetime / 2
		}
		return time.Until(mp.Expires) / 2
	}
	wait := renewAt(mp)
	for {
		if !sleep(ctx, wait) {
			c.mu.Lock()
			parent := c.removeCtx
			c.mu.Unlock()
			rctx, cancel := context.WithTimeout(parent, c.cfg.MapTimeout)
			err := m.unmap(rctx)
			cancel()
			if err != nil {
				c.failures.Add(1)
				err = fmt.Errorf("portmap: removing the %v mapping %v: %w", mp.Protocol, mp.External, err)
			} else {
				c.log.Debug("port mapping removed", "protocol", mp.Protocol, "external", mp.External)
			}
			c.mu.Lock()
			c.closeErr = err
			c.mu.Unlock()
			c.set(Mapping{}, false)
			return
		}
		rctx, cancel := context.WithTimeout(ctx, c.cfg.MapTimeout)
		ext, life, err := m.mapPort(rctx, c.cfg.Lifetime)
		cancel()
		if err == nil {
			c.renewed.Add(1)
			mp.External = ext
			mp.Expires = time.Time{}
			if life > 0 {
				mp.Expires = time.Now().Add(life)
			}
			c.set(mp, true)
			wait = renewAt(mp)
			continue
		}
		if ctx.Err() != nil {
			continue // removes it
		}
		c.failures.Add(1)
		c.log.Debug("port mapping renewal failed", "protocol", mp.Protocol, "err", err)
		left := time.Until(mp.Expires)
		if mp.Expires.IsZero() || left < c.cfg.MapTimeout {
			c.log.Info("port mapping lost", "protocol", mp.Protocol, "external", mp.External, "err", err)
			c.set(Mapping{}, false)
			return
		}
		wait = max(left/4, time.Second)
	}
}

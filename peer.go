package quicpipe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// closedCIDLinger is how long a connection's CIDs stay registered after it
// ends: several of the other side's probe timeouts, so that a lost
// CONNECTION_CLOSE is answered again through the relay.
const closedCIDLinger = 10 * time.Second

// peer is what a Dialer and an Accepter share: one UDP socket, one
// quic.Transport whose connection IDs derive from the peer's CID key, and a
// registration with the relay made over that same socket, so that the NAT
// mapping towards the relay is the one the peer connection uses.
type peer struct {
	cfg       *Config
	conn      *net.UDPConn
	ownConn   bool
	pconn     *peerConn
	tr        *quic.Transport
	gen       *cidGenerator
	relayAddr *net.UDPAddr
	sess      *relaySession
	direct    *directManager // nil if Config.DisableDirect
	tunnel    *tunnelRunner  // nil if Config.Tunnel is TunnelOff

	closed    atomic.Bool // set when close starts
	closeOnce sync.Once
	closeErr  error
}

// peerOptions are the settings of a peer that are no Config field: the
// package's tests shorten the direct-path timers with them.
type peerOptions struct {
	directTiming *directTiming // nil: defaultDirectTiming
}

func newPeer(ctx context.Context, cfg *Config, opts peerOptions) (*peer, error) {
	relayAddr, err := net.ResolveUDPAddr("udp", cfg.RelayAddr)
	if err != nil {
		return nil, fmt.Errorf("quicpipe: relay address %q: %w", cfg.RelayAddr, err)
	}
	if relayAddr.Port == 0 || relayAddr.IP == nil {
		return nil, fmt.Errorf("quicpipe: relay address %q needs a host and a port", cfg.RelayAddr)
	}
	relayTLS := cfg.RelayTLSConfig
	if relayTLS != nil {
		relayTLS = relayTLS.Clone()
	} else {
		relayTLS, err = ClientTLSConfig(nil, cfg.RelayKey, "h3")
		if err != nil {
			return nil, err
		}
	}
	p := &peer{cfg: cfg, conn: cfg.Conn, relayAddr: relayAddr}
	if p.conn == nil {
		network, laddr := "udp4", &net.UDPAddr{}
		if relayAddr.IP.To4() == nil {
			network = "udp6"
		}
		if cfg.ListenAddr != "" {
			if laddr, err = net.ResolveUDPAddr(network, cfg.ListenAddr); err != nil {
				return nil, fmt.Errorf("quicpipe: listen address %q: %w", cfg.ListenAddr, err)
			}
		}
		if p.conn, err = net.ListenUDP(network, laddr); err != nil {
			return nil, fmt.Errorf("quicpipe: open socket: %w", err)
		}
		p.ownConn = true
	}
	if p.gen, err = newCIDGenerator(cfg.CIDKey); err != nil {
		p.closeSocket()
		return nil, err
	}
	p.gen.setLinger(closedCIDLinger)
	p.pconn = newPeerConn(p.conn, relayAddr.AddrPort(), !cfg.DisableDirect)
	p.tr = &quic.Transport{
		Conn:                  p.pconn,
		ConnectionIDGenerator: p.gen,
	}
	if cfg.Tunnel != TunnelOff {
		if p.tunnel, err = newTunnelRunner(p.pconn, cfg); err != nil {
			p.close()
			return nil, err
		}
		if err := p.tunnel.start(ctx); err != nil {
			p.close()
			return nil, err
		}
	}
	p.sess = newRelaySession(p.tr, relayAddr, relayTLS, cfg.CIDKey, p.gen, cfg)
	if err := p.sess.start(ctx); err != nil {
		var ce *RelayConnError
		if p.tunnel != nil && errors.As(err, &ce) && ce.Tunnel == nil {
			ce.Tunnel = p.tunnel.err()
		}
		p.close()
		return nil, err
	}
	if !cfg.DisableDirect {
		p.direct = newDirectManager(p.pconn, relayAddr.AddrPort(), func() netip.AddrPort {
			return p.sess.registration().Observed
		}, p.sess.recheckObserved, cfg, opts.directTiming)
		p.sess.setOnObserved(p.direct.observedChanged)
	}
	return p, nil
}

func (p *peer) closeSocket() error {
	if p.ownConn {
		return p.conn.Close()
	}
	return nil
}

// close unregisters, closes every connection and the transport, and closes
// the socket if the peer opened it.
func (p *peer) close() error {
	p.closed.Store(true)
	p.closeOnce.Do(func() {
		p.direct.close()
		if p.sess != nil {
			p.sess.close()
		}
		var errs []error
		if p.tr != nil {
			if err := p.tr.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
		}
		if p.tunnel != nil {
			p.tunnel.close()
		}
		errs = append(errs, p.closeSocket())
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

// closedOr returns ErrClosed if the peer is closed (err, from a dial or an
// accept that the close cut short, then only says how), else err.
func (p *peer) closedOr(err error) error {
	if p.closed.Load() {
		return ErrClosed
	}
	return err
}

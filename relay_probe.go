package quicpipe

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/quicpipe/quicpipe/internal/addrprobe"
	"github.com/quicpipe/quicpipe/internal/forward"
)

// Address probes (docs/PROTOCOL.md, "Address probes"): on each socket of
// RelayConfig.ProbeConns the relay answers a 40-byte request with the
// address and port it came from, in a reply of the same size. A client
// that probes two such sockets from one socket of its own learns whether
// its NAT maps that socket to one public address for every destination
// (endpoint-independent mapping, what direct paths need) or not; the
// quicpipe command's doctor does that.

// Defaults of the probe limits (RelayConfig.ProbeRate and ProbeRatePerSource).
const (
	defaultProbeRate          = 2000
	defaultProbeRatePerSource = 20
	maxProbeSources           = 4096
)

// ProbeStats counts the address probes a relay handled.
type ProbeStats struct {
	// Answered counts the requests answered.
	Answered uint64
	// Malformed counts datagrams on a probe socket that were no valid
	// request (too short, another protocol, a reply).
	Malformed uint64
	// Limited counts requests not answered because their source, or all
	// sources together, asked faster than the relay's probe rates allow.
	Limited uint64
}

// probeServer answers address probes on the relay's probe sockets.
type probeServer struct {
	conns     []*net.UDPConn
	rate      int64
	global    forward.TokenBucket
	perSource *sourceLimiter

	answered, malformed, limited atomic.Uint64
}

func newProbeServer(cfg *RelayConfig) *probeServer {
	if len(cfg.ProbeConns) == 0 {
		return nil
	}
	return &probeServer{
		conns: cfg.ProbeConns,
		rate:  int64(cfg.ProbeRate),
		perSource: &sourceLimiter{rate: float64(cfg.ProbeRatePerSource), burst: float64(cfg.ProbeRatePerSource),
			max: maxProbeSources, buckets: make(map[netip.Prefix]*forward.TokenBucket)},
	}
}

// startProbes starts answering probes on every probe socket until the relay
// closes. The sockets belong to the caller: closing the relay only stops
// reading them (a read deadline in the past wakes the readers).
func (r *Relay) startProbes() {
	ps := r.probes
	if ps == nil {
		return
	}
	for _, c := range ps.conns {
		r.wg.Go(func() { ps.serve(c, r) })
	}
	r.wg.Go(func() {
		<-r.closed
		for _, c := range ps.conns {
			c.SetReadDeadline(time.Unix(1, 0))
		}
	})
	for _, c := range ps.conns {
		r.log.Info("relay answering address probes", "addr", c.LocalAddr().String())
	}
}

// serve reads and answers the probes of one socket until the relay closes
// or the socket fails.
func (ps *probeServer) serve(c *net.UDPConn, r *Relay) {
	buf := make([]byte, 1500)
	out := make([]byte, 0, addrprobe.Size)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			select {
			case <-r.closed:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				r.log.Warn("address probe socket closed", "addr", c.LocalAddr().String())
				return
			}
			// Errors such as an ICMP report of an earlier reply do not end
			// the socket.
			continue
		}
		id, err := addrprobe.ParseRequest(buf[:n])
		if err != nil {
			ps.malformed.Add(1)
			continue
		}
		from = netAddrPort(from)
		now := time.Now()
		if ok, _ := ps.perSource.allow(from.Addr(), now); !ok || !ps.global.Allow(1, now.UnixNano(), ps.rate, ps.rate) {
			ps.limited.Add(1)
			continue
		}
		out = addrprobe.AppendReply(out[:0], id, from)
		if _, err := c.WriteToUDPAddrPort(out, from); err == nil {
			ps.answered.Add(1)
		}
	}
}

// ProbeStats returns the relay's address-probe counters (all zero without
// RelayConfig.ProbeConns).
func (r *Relay) ProbeStats() ProbeStats {
	ps := r.probes
	if ps == nil {
		return ProbeStats{}
	}
	return ProbeStats{Answered: ps.answered.Load(), Malformed: ps.malformed.Load(), Limited: ps.limited.Load()}
}

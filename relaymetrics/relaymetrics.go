// Package relaymetrics exports a Quicpipe relay's statistics (Relay.Stats)
// to Prometheus, all named quicpipe_relay_*. It is a package of its own so
// that programs that do not export metrics do not link the Prometheus client.
package relaymetrics

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/quicpipe/quicpipe"
)

// collector exports a relay's counters. It reads them at scrape time, so
// metrics cost nothing on the forwarding path.
type collector struct {
	r *quicpipe.Relay

	forwarded, forwardedBytes, toServer, dropped, handshakes *prometheus.Desc
	registered, rejected, expired, rebinds                   *prometheus.Desc
	registrations, cids, remote, xdpPackets, xdpBytes        *prometheus.Desc
	conns, handshaking, connsRefused, retries                *prometheus.Desc
	idleClosed, headerTimeouts, resets                       *prometheus.Desc
	tunnels, tunnelsOpened, tunnelEvents, tunnelDropped      *prometheus.Desc
	probes                                                   *prometheus.Desc
	sleepers, sleepEvents, sleepDropped                      *prometheus.Desc
}

// NewCollector returns a Prometheus collector for r's metrics, for a service
// that serves its own /metrics. Listen serves them on an address of their
// own.
func NewCollector(r *quicpipe.Relay) prometheus.Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("quicpipe_relay_"+name, help, labels, nil)
	}
	return &collector{
		r:              r,
		forwarded:      d("forwarded_packets_total", "Datagrams forwarded to peers.", "path"),
		forwardedBytes: d("forwarded_bytes_total", "Bytes forwarded to peers.", "path"),
		toServer:       d("server_packets_total", "Datagrams handed to the relay's HTTP/3 server."),
		dropped:        d("dropped_packets_total", "Datagrams not forwarded, by reason.", "reason"),
		handshakes:     d("handshakes_total", "HTTP/3 connections accepted."),
		registered:     d("registrations_total", "Successful registrations and refreshes."),
		rejected:       d("rejected_requests_total", "Refused API requests, by error code.", "code"),
		expired:        d("expired_registrations_total", "Registrations removed because they were not refreshed."),
		rebinds:        d("rebinds_total", "Registrations moved to a peer's new address after its connection migrated or it refreshed from there."),
		registrations:  d("registrations", "Current registrations."),
		cids:           d("cids", "Currently registered connection IDs."),
		remote:         d("remote_registrations", "Current registrations held by other members of a relay fleet (included in registrations)."),
		xdpPackets:     d("xdp_frames_total", "Frames seen by the XDP program, by outcome.", "outcome"),
		xdpBytes:       d("xdp_bytes_total", "Bytes of the frames seen by the XDP program, by outcome.", "outcome"),
		conns:          d("connections", "Current HTTP/3 connections, established or in their handshake."),
		handshaking:    d("handshakes_in_progress", "Current HTTP/3 handshakes in progress."),
		connsRefused:   d("refused_connections_total", "Connections refused at their first packet, by limit.", "reason"),
		retries:        d("retries_total", "Connection attempts asked to prove their address with a Retry."),
		idleClosed:     d("idle_closed_connections_total", "Connections closed for holding no request or registration."),
		headerTimeouts: d("header_timeouts_total", "Requests reset because their headers did not arrive in time."),
		tunnels:        d("tunnels", "Tunnels (TLS and WebSocket, for peers without UDP) open now."),
		tunnelsOpened:  d("tunnels_opened_total", "Tunnels opened."),
		tunnelEvents:   d("tunnel_events_total", "Tunnel connections refused or closed for a limit or bad input, by reason.", "reason"),
		tunnelDropped:  d("tunnel_dropped_packets_total", "Datagrams for tunnels dropped: a queue full or the tunnel gone."),
		probes:         d("address_probes_total", "Address probes (quicpipe doctor) received, by result.", "result"),
		resets:         d("stateless_resets_total", "Stateless resets sent for relay connection IDs of an earlier run or of another fleet member."),
		sleepers:       d("sleeping_listeners", "Listeners sleeping now: registration and mailbox kept without a connection."),
		sleepEvents:    d("sleep_events_total", "Sleeping listeners' events, by kind: slept, expired, left, keepalive, challenge, moved, wake, wake_resend.", "event"),
		sleepDropped:   d("sleep_dropped_packets_total", "Sleep datagrams ignored, by reason.", "reason"),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.forwarded, c.forwardedBytes, c.toServer, c.dropped, c.handshakes,
		c.registered, c.rejected, c.expired, c.rebinds, c.registrations, c.cids, c.remote, c.xdpPackets, c.xdpBytes,
		c.conns, c.handshaking, c.connsRefused, c.retries, c.idleClosed, c.headerTimeouts, c.resets,
		c.tunnels, c.tunnelsOpened, c.tunnelEvents, c.tunnelDropped, c.probes, c.sleepers, c.sleepEvents, c.sleepDropped} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.r.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(c.forwarded, s.Forwarded, "userspace")
	counter(c.forwardedBytes, s.ForwardedBytes, "userspace")
	if s.XDP != nil {
		var fwd, fwdBytes uint64
		for outcome, st := range s.XDP {
			counter(c.xdpPackets, st.Packets, outcome)
			counter(c.xdpBytes, st.Bytes, outcome)
			if strings.HasPrefix(outcome, "forwarded") {
				fwd += st.Packets
				fwdBytes += st.Bytes
			}
		}
		counter(c.forwarded, fwd, "xdp")
		counter(c.forwardedBytes, fwdBytes, "xdp")
	}
	counter(c.toServer, s.ToServer)
	for reason, n := range s.Dropped {
		counter(c.dropped, n, reason)
	}
	counter(c.handshakes, s.Handshakes)
	counter(c.registered, s.Registered)
	for code, n := range s.Rejected {
		counter(c.rejected, n, code)
	}
	counter(c.expired, s.Expired)
	counter(c.rebinds, s.Rebinds)
	ch <- prometheus.MustNewConstMetric(c.registrations, prometheus.GaugeValue, float64(s.Registrations))
	ch <- prometheus.MustNewConstMetric(c.cids, prometheus.GaugeValue, float64(s.CIDs))
	ch <- prometheus.MustNewConstMetric(c.remote, prometheus.GaugeValue, float64(s.RemoteRegistrations))
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(s.Conns))
	ch <- prometheus.MustNewConstMetric(c.handshaking, prometheus.GaugeValue, float64(s.Handshaking))
	for reason, n := range s.ConnsRefused {
		counter(c.connsRefused, n, reason)
	}
	counter(c.retries, s.Retries)
	counter(c.idleClosed, s.IdleClosed)
	counter(c.headerTimeouts, s.HeaderTimeouts)
	counter(c.resets, s.Resets)

	ts := c.r.TunnelStats()
	ch <- prometheus.MustNewConstMetric(c.tunnels, prometheus.GaugeValue, float64(ts.Open))
	counter(c.tunnelsOpened, ts.Opened)
	for reason, n := range map[string]uint64{"refused": ts.Refused, "bad_upgrade": ts.BadUpgrades, "malformed": ts.Malformed,
		"oversized": ts.Oversized, "read_error": ts.ReadErrors, "idle": ts.Idle, "slow_reader": ts.SlowReaders} {
		counter(c.tunnelEvents, n, reason)
	}
	counter(c.tunnelDropped, ts.Dropped)

	ps := c.r.ProbeStats()
	counter(c.probes, ps.Answered, "answered")
	counter(c.probes, ps.Malformed, "malformed")
	counter(c.probes, ps.Limited, "limited")

	ss := s.Sleep
	ch <- prometheus.MustNewConstMetric(c.sleepers, prometheus.GaugeValue, float64(ss.Sleeping))
	for event, n := range map[string]uint64{"slept": ss.Slept, "expired": ss.Expired, "left": ss.Left, "keepalive": ss.KeepAlives,
		"challenge": ss.Challenges, "moved": ss.Moved, "wake": ss.Wakes, "wake_resend": ss.WakeResends} {
		counter(c.sleepEvents, n, event)
	}
	for reason, n := range ss.Dropped {
		counter(c.sleepDropped, n, reason)
	}
}

// Server serves a relay's metrics at /metrics over HTTP.
type Server struct {
	srv  *http.Server
	addr net.Addr
}

// Listen listens on the TCP address addr (for example "127.0.0.1:9090") and
// serves r's metrics there at /metrics until Close, with those of the
// further collectors given (for example a fleet member's).
func Listen(addr string, r *quicpipe.Relay, more ...prometheus.Collector) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("quicpipe: metrics listener: %w", err)
	}
	reg := prometheus.NewRegistry()
	if err := reg.Register(NewCollector(r)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("quicpipe: metrics: %w", err)
	}
	for _, c := range more {
		if err := reg.Register(c); err != nil {
			ln.Close()
			return nil, fmt.Errorf("quicpipe: metrics: %w", err)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	s := &Server{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		addr: ln.Addr(),
	}
	go s.srv.Serve(ln)
	return s, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.addr }

// Close stops the server.
func (s *Server) Close() error { return s.srv.Close() }

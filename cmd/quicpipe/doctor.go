package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/internal/addrprobe"
	"github.com/quicpipe/quicpipe/internal/addrscope"
	"github.com/quicpipe/quicpipe/internal/portmap"
)

// cmdDoctor checks what this network allows a pipe: UDP to the relay, the
// public address(es) the relay's probe ports see, whether the NAT maps by
// destination, IPv6, the port-mapping protocols the gateway answers, and a
// verdict on direct paths.
func cmdDoctor(ctx context.Context, e *env) error {
	fs := newFlagSet(e, "doctor", "",
		"Checks how this network treats a pipe: whether UDP reaches the relay (and the round\n"+
			"trip), the public address the relay's probe ports see this host at, whether the NAT\n"+
			"gives one socket another public port for each destination (then direct paths work\n"+
			"only with peers behind easy NATs), IPv6, which port-mapping protocols (PCP, NAT-PMP,\n"+
			"UPnP-IGD) the default gateway answers (probes only: nothing is mapped), and a\n"+
			"one-line verdict. Needs a relay that answers address probes (quicpipe relay does,\n"+
			"on the two ports after its own).\n"+
			"Exit status: 0 when UDP reaches the relay, 1 when it does not.\n")
	relay := fs.String("relay", "", "relay UDP `address` (host:port)")
	var relayKey keyList
	fs.Var(&relayKey, "relay-key", "public `key` of the relay given with -relay")
	probe := fs.String("probe", "", "the relay's address-probe `addresses`, comma-separated (default: the two ports after -relay's)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long each check waits for an answer")
	if err := parseFlags(fs, e); err != nil {
		return err
	}
	switch {
	case fs.NArg() != 0:
		return usageError(fs, e, "unexpected arguments %q", fs.Args())
	case *relay == "":
		return usageError(fs, e, "give the relay to check with -relay HOST:PORT -relay-key KEY")
	case len(relayKey) != 1:
		return usageError(fs, e, "-relay needs the relay's key: -relay-key KEY")
	case *timeout <= 0:
		return usageError(fs, e, "-timeout must be positive")
	}
	if err := checkRelayAddr(*relay); err != nil {
		return usageError(fs, e, "%v", err)
	}
	probes, err := probeAddrs(*probe, *relay)
	if err != nil {
		return usageError(fs, e, "-probe: %v", err)
	}
	rep, err := checkNetwork(ctx, *relay, relayKey[0], probes, *timeout)
	if err != nil {
		return err
	}
	rep.print(e.stdout)
	if !rep.udp {
		return errors.New("UDP does not reach the relay: no pipe can work from this network through it")
	}
	return nil
}

// probeAddrs returns the probe addresses: spec's, or the two ports after
// relay's.
func probeAddrs(spec, relay string) ([]string, error) {
	if spec != "" {
		return strings.Split(spec, ","), nil
	}
	host, port, err := net.SplitHostPort(relay)
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(port)
	if err != nil || n <= 0 || n > 65533 {
		return nil, fmt.Errorf("relay port %q leaves no room for the default probe ports; give them", port)
	}
	return []string{net.JoinHostPort(host, strconv.Itoa(n+1)), net.JoinHostPort(host, strconv.Itoa(n+2))}, nil
}

// netReport is what checkNetwork found.
type netReport struct {
	relay  netip.AddrPort
	udp    bool          // a QUIC handshake with the relay succeeded
	rtt    time.Duration // its smoothed RTT
	udpErr error
	local  netip.AddrPort // the socket's address on the route to the relay
	probes []probeResult
	ipv6   []netip.Addr // this host's global IPv6 addresses
	probe6 *probeResult // a probe of the relay over IPv6, if it has an IPv6 address
	// no6 says why the relay was not probed over IPv6.
	no6 string
	// pm is what the gateway answered to the port-mapping probe; pmErr,
	// if not nil, why it was not probed.
	pm    portmap.ProbeResult
	pmErr error
}

// portMapWait bounds the doctor's port-mapping probe: four times the
// library's budget (portmap.DefaultProbeTimeout), to tell a slow gateway
// from none, yet short enough not to hold up a doctor whose other checks
// are done.
const portMapWait = time.Second

// portMapping reports whether the gateway answered a port-mapping
// protocol: then a pipe maps its port there, and the mapped address is
// one public address for every destination.
func (r *netReport) portMapping() bool { return r.pmErr == nil && len(r.pm.Protocols) > 0 }

// probeResult is the answer of one probe address.
type probeResult struct {
	to       netip.AddrPort
	observed netip.AddrPort // invalid: no answer
	rtt      time.Duration
}

// mapping is what the probes tell about this host's NAT.
type mapping int

const (
	mappingUnknown     mapping = iota // fewer than two answers
	mappingNone                       // the relay sees the socket's own address
	mappingIndependent                // one public address for every destination
	mappingDependent                  // another public port per destination
)

func (r *netReport) mapping() mapping {
	var seen []netip.AddrPort
	for _, p := range r.probes {
		if p.observed.IsValid() {
			seen = append(seen, p.observed)
		}
	}
	switch {
	case len(seen) > 0 && seen[0] == r.local:
		return mappingNone
	case len(seen) < 2:
		return mappingUnknown
	}
	for _, s := range seen[1:] {
		if s != seen[0] {
			return mappingDependent
		}
	}
	return mappingIndependent
}

// Verdicts on direct paths, from this side's view (the other side's NAT
// matters as much: two sides whose NATs both map by destination stay on
// the relay).
const (
	verdictLikely   = "direct connections likely"
	verdictEasyOnly = "direct connections only with peers that have an easy NAT"
	verdictUnknown  = "direct connections: unknown (no probe port answered: the relay answers no address probes, or UDP to its other ports is blocked)"
)

// verdict sums up the report in one line.
func (r *netReport) verdict() string {
	if !r.udp {
		return "relay only: UDP does not reach the relay (pipes can still go through its TLS tunnel, quicpipe relay -tunnel)"
	}
	switch r.mapping() {
	case mappingNone, mappingIndependent:
		return verdictLikely
	case mappingDependent:
		if r.portMapping() {
			return verdictLikely + " (the NAT maps by destination, but the gateway maps ports with " + joinProtocols(r.pm.Protocols) + ": a mapped port is the same for every destination)"
		}
		return verdictEasyOnly
	}
	if r.answered() == 1 {
		return "direct connections: unknown (only one probe port answered: the mapping could not be compared)"
	}
	return verdictUnknown
}

// answered counts the probe ports that answered.
func (r *netReport) answered() int {
	n := 0
	for _, p := range r.probes {
		if p.observed.IsValid() {
			n++
		}
	}
	return n
}

// print writes the report, one finding a line.
func (r *netReport) print(w io.Writer) {
	if r.udp {
		fmt.Fprintf(w, "relay %s: UDP ok, round trip %v\n", r.relay, roundRTT(r.rtt))
	} else {
		fmt.Fprintf(w, "relay %s: UDP fails: %v\n", r.relay, r.udpErr)
	}
	fmt.Fprintf(w, "local address: %s\n", r.local)
	for _, p := range r.probes {
		if p.observed.IsValid() {
			fmt.Fprintf(w, "public address: %s (seen by probe port %s, round trip %v)\n", p.observed, p.to, roundRTT(p.rtt))
		} else {
			fmt.Fprintf(w, "public address: no answer from probe port %s\n", p.to)
		}
	}
	switch r.mapping() {
	case mappingNone:
		fmt.Fprintln(w, "mapping: none (no NAT between this host and the relay)")
	case mappingIndependent:
		fmt.Fprintln(w, "mapping: endpoint-independent (one public address for every destination)")
	case mappingDependent:
		fmt.Fprintln(w, "mapping: endpoint-dependent (another public port for each destination)")
	default:
		fmt.Fprintln(w, "mapping: unknown (fewer than two probe ports answered)")
	}
	if len(r.ipv6) == 0 {
		fmt.Fprintln(w, "IPv6: no global address on this host")
	} else {
		fmt.Fprintf(w, "IPv6: global address %s on this host\n", joinAddrs(r.ipv6))
	}
	switch {
	case r.probe6 == nil:
		fmt.Fprintf(w, "IPv6 to the relay: not checked (%s)\n", r.no6)
	case r.probe6.observed.IsValid():
		fmt.Fprintf(w, "IPv6 to the relay: ok, seen as %s (round trip %v)\n", r.probe6.observed, roundRTT(r.probe6.rtt))
	default:
		fmt.Fprintf(w, "IPv6 to the relay: no answer from %s\n", r.probe6.to)
	}
	switch {
	case errors.Is(r.pmErr, portmap.ErrNoDefaultGateway):
		fmt.Fprintln(w, "port mapping: no gateway found (no default IPv4 route)")
	case r.pmErr != nil:
		fmt.Fprintf(w, "port mapping: not probed (%v)\n", r.pmErr)
	case len(r.pm.Protocols) == 0:
		fmt.Fprintf(w, "port mapping: none answered at %s (PCP, NAT-PMP and UPnP-IGD probed)\n", r.pm.Gateway)
	default:
		fmt.Fprintf(w, "port mapping: %s (gateway %s)\n", joinProtocols(r.pm.Protocols), r.pm.Gateway)
	}
	fmt.Fprintf(w, "verdict: %s\n", r.verdict())
}

func joinProtocols(ps []portmap.Protocol) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// checkNetwork runs the checks from one UDP socket: a QUIC handshake with
// the relay, pinned to key, and address probes to probes; then IPv6. The
// port-mapping probe of the default gateway runs meanwhile.
func checkNetwork(ctx context.Context, relay string, key ed25519.PublicKey, probes []string, timeout time.Duration) (*netReport, error) {
	tlsConf, err := quicpipe.ClientTLSConfig(nil, key, "h3")
	if err != nil {
		return nil, err
	}
	var (
		pm    portmap.ProbeResult
		pmErr error
		pmWG  sync.WaitGroup
	)
	pmWG.Go(func() { pm, pmErr = portmap.Probe(ctx, portmap.Config{ProbeTimeout: min(timeout, portMapWait)}) })
	defer pmWG.Wait()
	rep, err := runChecks(ctx, relay, probes, timeout, func(tr *quic.Transport, ra *net.UDPAddr, rep *netReport) {
		hctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		qc, err := tr.Dial(hctx, ra, tlsConf, &quic.Config{HandshakeIdleTimeout: timeout})
		if err != nil {
			rep.udpErr = err
			return
		}
		rep.udp = true
		rep.rtt = qc.ConnectionStats().SmoothedRTT
		qc.CloseWithError(0, "doctor done")
	})
	if err != nil {
		return nil, err
	}
	switch {
	case rep.relay.Addr().Is6():
		rep.no6 = "the relay was reached over IPv6 above"
	case len(rep.probes) == 0:
		rep.no6 = "no probe port"
	default:
		rep.probe6, rep.no6 = probeIPv6(ctx, relay, rep.probes[0].to.Port(), timeout)
	}
	rep.ipv6 = globalIPv6()
	pmWG.Wait()
	rep.pm, rep.pmErr = pm, pmErr
	return rep, nil
}

// probeNetwork runs only the address probes of checkNetwork.
func probeNetwork(ctx context.Context, relay string, probes []string, timeout time.Duration) (*netReport, error) {
	return runChecks(ctx, relay, probes, timeout, nil)
}

// runChecks opens one UDP socket, probes every address of probes from it,
// and meanwhile runs also (if not nil) on the same socket.
func runChecks(ctx context.Context, relay string, probes []string, timeout time.Duration, also func(*quic.Transport, *net.UDPAddr, *netReport)) (*netReport, error) {
	ra, err := net.ResolveUDPAddr("udp", relay)
	if err != nil {
		return nil, fmt.Errorf("relay address: %w", err)
	}
	rep := &netReport{relay: unmapped(ra.AddrPort())}
	network := "udp4"
	if rep.relay.Addr().Is6() {
		network = "udp6"
	}
	var targets []netip.AddrPort
	for _, p := range probes {
		pa, err := net.ResolveUDPAddr(network, strings.TrimSpace(p))
		if err != nil {
			return nil, fmt.Errorf("probe address %s: %w", p, err)
		}
		targets = append(targets, unmapped(pa.AddrPort()))
	}
	conn, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil, fmt.Errorf("opening a UDP socket: %w", err)
	}
	tr := &quic.Transport{Conn: conn}
	defer func() {
		tr.Close()
		conn.Close()
	}()
	rep.local = routeLocal(network, ra, conn)
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	probeDone := make(chan []probeResult, 1)
	go func() { probeDone <- probeAll(pctx, tr, targets) }()
	if also != nil {
		also(tr, ra, rep)
	}
	rep.probes = <-probeDone
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return rep, nil
}

// routeLocal returns the address of conn on the route to the relay: the
// source address the kernel picks, and conn's port.
func routeLocal(network string, relay *net.UDPAddr, conn *net.UDPConn) netip.AddrPort {
	port := conn.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	c, err := net.DialUDP(network, nil, relay)
	if err != nil {
		return netip.AddrPortFrom(netip.Addr{}, port)
	}
	defer c.Close()
	return netip.AddrPortFrom(unmapped(c.LocalAddr().(*net.UDPAddr).AddrPort()).Addr(), port)
}

// probeAll sends address probes to every target from tr's socket, three
// times a second until each has answered or ctx is done. Its reader ends
// with ctx, which the caller cancels.
func probeAll(ctx context.Context, tr *quic.Transport, targets []netip.AddrPort) []probeResult {
	res := make([]probeResult, len(targets))
	ids := make([]addrprobe.TxID, len(targets))
	sent := make([]time.Time, len(targets))
	for i, t := range targets {
		res[i].to = t
		rand.Read(ids[i][:])
	}
	got := make(chan struct {
		from netip.AddrPort
		b    []byte
		at   time.Time
	}, 16)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := tr.ReadNonQUICPacket(ctx, buf)
			if err != nil {
				close(got)
				return
			}
			ua, ok := from.(*net.UDPAddr)
			if !ok {
				continue
			}
			select {
			case got <- struct {
				from netip.AddrPort
				b    []byte
				at   time.Time
			}{unmapped(ua.AddrPort()), append([]byte(nil), buf[:n]...), time.Now()}:
			case <-ctx.Done():
				close(got)
				return
			}
		}
	}()
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	send := func() {
		for i, t := range targets {
			if !res[i].observed.IsValid() {
				sent[i] = time.Now()
				tr.WriteTo(addrprobe.AppendRequest(nil, ids[i]), net.UDPAddrFromAddrPort(t))
			}
		}
	}
	send()
	for left := len(targets); left > 0; {
		select {
		case <-tick.C:
			send()
		case p, ok := <-got:
			if !ok {
				return res
			}
			id, obs, err := addrprobe.ParseReply(p.b)
			if err != nil {
				continue
			}
			for i := range targets {
				if id == ids[i] && p.from == targets[i] && !res[i].observed.IsValid() {
					res[i].observed, res[i].rtt = obs, p.at.Sub(sent[i])
					left--
				}
			}
		}
	}
	return res
}

// probeIPv6 probes the IPv6 address of the relay's host name, if it has
// one, at port; if it does not, it says why.
func probeIPv6(ctx context.Context, relay string, port uint16, timeout time.Duration) (*probeResult, string) {
	host, _, err := net.SplitHostPort(relay)
	if err != nil {
		return nil, err.Error()
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil, "-relay is an IPv4 address; a host name with an IPv6 address would be tried too"
	}
	lctx, cancel := context.WithTimeout(ctx, timeout)
	ips, err := net.DefaultResolver.LookupNetIP(lctx, "ip6", host)
	cancel()
	if err != nil || len(ips) == 0 {
		return nil, host + " has no IPv6 address"
	}
	to := netip.AddrPortFrom(ips[0], port)
	conn, err := net.ListenUDP("udp6", nil)
	if err != nil {
		return nil, "no IPv6 socket: " + err.Error()
	}
	tr := &quic.Transport{Conn: conn}
	defer func() {
		tr.Close()
		conn.Close()
	}()
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r := probeAll(pctx, tr, []netip.AddrPort{to})[0]
	return &r, ""
}

// globalIPv6 returns this host's global unicast IPv6 addresses.
func globalIPv6() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		p, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(p.IP)
		if ok && ip.Is6() && !ip.Is4In6() && addrscope.Of(ip) == addrscope.Public {
			out = append(out, ip)
		}
	}
	return out
}

func unmapped(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

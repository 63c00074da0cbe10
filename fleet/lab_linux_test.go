//go:build linux

package fleet

// The fleet lab: three relay members behind one anycast address, an ECMP
// router in front of them, a 3-node NATS cluster, peers behind NATs. Every
// member, and every NATS node, is a real process (cmd/quicpipe and
// internal/natsd, built by internal/testbin) in its member's namespace;
// the peers run in this test process on sockets opened in their
// namespaces.
//
//	peerA 10.1.0.2 ─ natA 198.51.100.2 ─┐                ┌─ m1  eth0 10.0.1.2, lo 192.0.2.1
//	                                    edge (ECMP over ─┼─ m2  eth0 10.0.2.2, lo 192.0.2.1
//	peerB 10.2.0.2 ─ natB 203.0.113.2 ──┘ m1, m2, m3)    └─ m3  eth0 10.0.3.2, lo 192.0.2.1
//
// The edge router holds a multipath route to 192.0.2.1/32 with one next hop
// per member, hashing on ports (fib_multipath_hash_policy=1): each peer's
// flow lands on one member, different peers on different members. Each
// member runs `quicpipe relay -listen 192.0.2.1:4433 -fleet
// nats://10.0.1.2:4222,...` with the same identity file (peers pin one key;
// the stateless-reset key derives from it), and a NATS node (JetStream,
// routes to the two others) on its own address; the fleet's bucket has 3
// replicas. NAT routers masquerade (nftables); dialers live in peerA,
// accepters in peerB, every pipe relayed (Config.DisableDirect). Killing a
// member kills its relay process and removes its next hop, as a BGP
// withdrawal would; its NATS node lives on.

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/quic-go/quic-go"
	"golang.org/x/sys/unix"

	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/internal/netlab"
	"github.com/quicpipe/quicpipe/internal/testbin"
	"github.com/quicpipe/quicpipe/xdp"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.RemoveAll()
	os.Exit(code)
}

// The lab's addresses and ports.
const (
	labShared      = "192.0.2.1" // the members' anycast address
	labRelayPort   = 4433
	labNATSPort    = 4222
	labClusterPort = 6222
	labMetricsPort = 9090
	labMembers     = 3
)

// labMember is one member's namespace and processes.
type labMember struct {
	id    string // m1, m2, m3: the fleet member id
	ns    *netlab.NS
	addr  string // its own address, for NATS and metrics
	relay *netlab.Proc
	nats  *netlab.Proc
	store string // its NATS node's JetStream directory
}

// natsURL is the URL of the member's NATS node.
func (m *labMember) natsURL() string { return fmt.Sprintf("nats://%s:%d", m.addr, labNATSPort) }

// fleetLab is the lab at the top of this file.
type fleetLab struct {
	t                        *testing.T
	lab                      *netlab.Lab
	bin                      string // directory of the quicpipe and natsd binaries
	xdp                      bool
	edge                     *netlab.NS
	natA, natB, peerA, peerB *netlab.NS
	members                  []*labMember
	identity                 string // the members' identity file
	relayKey                 ed25519.PublicKey
	nc                       *nats.Conn // the test's client, through the edge router
	kv                       jetstream.KeyValue
	bucket                   *bucketLog
	httpc                    *http.Client // for the members' metrics, through the edge router
}

// labOptions configures a lab.
type labOptions struct {
	xdp bool // members forward with the XDP fast path on eth0
}

// labSkipXDP skips the test unless this kernel loads the relay's XDP
// program and ethtool is there (the peers' checksum offload goes off).
func labSkipXDP(t *testing.T) {
	t.Helper()
	p, err := xdp.Load(xdp.Config{})
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS) ||
		errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, xdp.ErrNotSupported) {
		t.Skipf("fleet lab: this kernel cannot load the XDP program: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	if _, err := exec.LookPath("ethtool"); err != nil {
		t.Skip("fleet lab: XDP needs ethtool")
	}
}

// newFleetLab builds the network, starts the NATS cluster and the three
// members, and follows the fleet's bucket.
func newFleetLab(t *testing.T, opts labOptions) *fleetLab {
	t.Helper()
	if err := netlab.Available(); err != nil {
		t.Skipf("fleet lab unavailable: %v", err)
	}
	if opts.xdp {
		labSkipXDP(t)
	}
	start := time.Now()
	bin, err := testbin.Build("github.com/quicpipe/quicpipe/cmd/quicpipe", "github.com/quicpipe/quicpipe/internal/natsd")
	if err != nil {
		t.Fatal(err)
	}
	built := time.Since(start)
	l := &fleetLab{t: t, lab: netlab.New(t), bin: bin, xdp: opts.xdp}
	l.buildNetwork()
	l.startNATS()
	l.startRelays()
	t.Logf("lab up in %v (binaries ready in %v)", time.Since(start).Round(time.Millisecond), built.Round(time.Millisecond))
	return l
}

// buildNetwork makes the namespaces, links, routes and NAT rules.
func (l *fleetLab) buildNetwork() {
	lab := l.lab
	l.edge = lab.NS("edge")
	l.edge.Forwarding()
	l.edge.Sysctl("net.ipv4.fib_multipath_hash_policy", "1")
	var hops []string
	for k := 1; k <= labMembers; k++ {
		m := &labMember{id: fmt.Sprintf("m%d", k), ns: lab.NS(fmt.Sprintf("m%d", k)), addr: fmt.Sprintf("10.0.%d.2", k)}
		lab.Link(m.ns, "eth0", m.addr+"/24", l.edge, m.id, fmt.Sprintf("10.0.%d.1/24", k))
		m.ns.Run("ip", "addr", "add", labShared+"/32", "dev", "lo")
		m.ns.Run("ip", "route", "add", "default", "via", fmt.Sprintf("10.0.%d.1", k))
		if l.xdp {
			// A veth transmits the program's XDP_TX frames only to a peer
			// that runs XDP itself.
			l.edge.AttachXDPPass(m.id)
		}
		hops = append(hops, m.addr)
		l.members = append(l.members, m)
	}
	l.edge.Multipath(labShared+"/32", hops...)

	nat := `table ip nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" masquerade
	}
}
table ip filter {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan0" ct state new drop
	}
}
`
	for _, side := range []struct {
		nat, peer          **netlab.NS
		name, wan, gw, lan string
	}{
		{&l.natA, &l.peerA, "A", "198.51.100.2", "198.51.100.1", "10.1.0"},
		{&l.natB, &l.peerB, "B", "203.0.113.2", "203.0.113.1", "10.2.0"},
	} {
		n, p := lab.NS("nat"+side.name), lab.NS("peer"+side.name)
		*side.nat, *side.peer = n, p
		lab.Link(n, "wan0", side.wan+"/24", l.edge, "nat"+side.name, side.gw+"/24")
		n.Run("ip", "route", "add", "default", "via", side.gw)
		n.Forwarding()
		n.Nft(nat)
		lab.Link(p, "eth0", side.lan+".2/24", n, "lan0", side.lan+".1/24")
		p.Run("ip", "route", "add", "default", "via", side.lan+".1")
		if l.xdp {
			// Complete UDP checksums, as from a NIC: the program updates
			// them incrementally and cannot complete a partial one.
			p.Run("ethtool", "-K", "eth0", "tx", "off")
		}
	}
}

// startNATS starts the three NATS nodes and waits until JetStream answers.
func (l *fleetLab) startNATS() {
	t := l.t
	for _, m := range l.members {
		m.store = t.TempDir()
		l.startNode(m)
	}
	for _, m := range l.members {
		m.nats.Match(regexp.MustCompile(`natsd ready`), 30*time.Second)
	}
	// The test observes through m1's and m2's nodes only: the tests stop
	// m3's, and the observer's own reconnection must not blur what they
	// measure.
	nc, err := nats.Connect(l.members[0].natsURL()+","+l.members[1].natsURL(), nats.SetCustomDialer(nsDialer{l.edge}),
		nats.IgnoreDiscoveredServers(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.Name("fleet lab"))
	if err != nil {
		t.Fatalf("connecting to the lab's NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	l.nc = nc
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// The cluster is ready for the fleet's bucket once it places a stream
	// on its three nodes (it has elected its meta leader, and every node
	// has joined).
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "lab-probe", Replicas: 3, Storage: jetstream.MemoryStorage})
		if err == nil {
			err = js.DeleteStream(ctx, "lab-probe")
		}
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lab's NATS cluster cannot place a 3-replica stream within 30s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startNode starts m's NATS node, clustered with the others.
func (l *fleetLab) startNode(m *labMember) {
	var routes []string
	for _, o := range l.members {
		if o != m {
			routes = append(routes, fmt.Sprintf("%s:%d", o.addr, labClusterPort))
		}
	}
	m.nats = m.ns.Start("natsd-"+m.id, testbin.Env(), filepath.Join(l.bin, "natsd"),
		"-name", "n-"+m.id, "-store", m.store,
		"-listen", fmt.Sprintf("%s:%d", m.addr, labNATSPort),
		"-cluster", fmt.Sprintf("%s:%d", m.addr, labClusterPort),
		"-routes", strings.Join(routes, ","))
}

// startRelays writes the members' shared identity and starts the relays:
// m1 first (it creates the bucket), then the others.
func (l *fleetLab) startRelays() {
	t := l.t
	id := quicpipe.GenerateIdentity()
	l.relayKey = id.Public().(ed25519.PublicKey)
	b, err := quicpipe.MarshalIdentity(id)
	if err != nil {
		t.Fatal(err)
	}
	l.identity = filepath.Join(t.TempDir(), "relay.key")
	if err := os.WriteFile(l.identity, b, 0o600); err != nil {
		t.Fatal(err)
	}
	listening := regexp.MustCompile(`relay listening on (\S+)\n`)
	l.startRelay(l.members[0])
	l.members[0].relay.Match(listening, 60*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(l.nc)
	if err != nil {
		t.Fatal(err)
	}
	if l.kv, err = js.KeyValue(ctx, DefaultBucket); err != nil {
		t.Fatalf("the fleet's bucket after m1 started: %v", err)
	}
	l.bucket = followBucket(t, l.kv)
	for _, m := range l.members[1:] {
		l.startRelay(m)
	}
	for _, m := range l.members[1:] {
		m.relay.Match(listening, 60*time.Second)
	}
	l.bucket.waitFor(t, 20*time.Second, "every member's liveness key", func(s *bucketLog) bool {
		for _, m := range l.members {
			if !s.live[m.id] {
				return false
			}
		}
		return true
	})
	l.httpc = &http.Client{
		Transport: &http.Transport{DialContext: l.edge.DialContext, DisableKeepAlives: true},
		Timeout:   5 * time.Second,
	}
}

// startRelay starts m's relay process.
func (l *fleetLab) startRelay(m *labMember) {
	var urls []string
	for _, o := range l.members {
		urls = append(urls, o.natsURL())
	}
	args := []string{filepath.Join(l.bin, "quicpipe"), "relay",
		"-listen", fmt.Sprintf("%s:%d", labShared, labRelayPort),
		"-identity", l.identity,
		"-fleet", strings.Join(urls, ","), "-fleet-member", m.id, "-fleet-replicas", "3",
		"-metrics", fmt.Sprintf("%s:%d", m.addr, labMetricsPort),
		"-mailbox=false",
		// Every peer of the lab comes from one of two NAT addresses.
		"-max-per-source", "1000", "-max-conns-per-source", "1000", "-max-cids-per-source", "1000000",
	}
	if l.xdp {
		args = append(args, "-xdp", "eth0", "-xdp-mode", "native")
	}
	m.relay = m.ns.Start("relay-"+m.id, testbin.Env(), args...)
}

// kill kills m's relay process and withdraws its next hop from the edge
// router's route.
func (l *fleetLab) kill(m *labMember) {
	m.relay.Kill()
	var hops []string
	for _, o := range l.members {
		if o != m && o.relay != nil {
			select {
			case <-o.relay.Done():
				continue
			default:
			}
			hops = append(hops, o.addr)
		}
	}
	l.edge.Multipath(labShared+"/32", hops...)
}

// metrics returns m's metrics: every sample, by name and labels as the
// exposition format writes them (`name{label="v"}`).
func (l *fleetLab) metrics(m *labMember) map[string]float64 {
	l.t.Helper()
	ms, err := l.scrape(m)
	if err != nil {
		l.t.Fatal(err)
	}
	return ms
}

// scrape is metrics, for any goroutine.
func (l *fleetLab) scrape(m *labMember) (map[string]float64, error) {
	resp, err := l.httpc.Get(fmt.Sprintf("http://%s:%d/metrics", m.addr, labMetricsPort))
	if err != nil {
		return nil, fmt.Errorf("metrics of %s: %w", m.id, err)
	}
	defer resp.Body.Close()
	out := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("metrics of %s: %w", m.id, err)
	}
	return out, nil
}

// forwarded returns the datagrams m forwarded in userspace and by its XDP
// program.
func (l *fleetLab) forwarded(m *labMember) (user, kernel float64) {
	s := l.metrics(m)
	return s[`quicpipe_relay_forwarded_packets_total{path="userspace"}`], s[`quicpipe_relay_forwarded_packets_total{path="xdp"}`]
}

// nsDialer dials from inside a namespace, for NATS clients in the test.
type nsDialer struct{ ns *netlab.NS }

func (d nsDialer) Dial(network, address string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return d.ns.DialContext(ctx, network, address)
}

// bucketLog follows the fleet's bucket: every registration's history and
// the members alive, as the test sees them through its own NATS client.
type bucketLog struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every entry
	regs    map[string][]bucketEvent
	live    map[string]bool
}

// bucketEvent is one change of a registration in the bucket: put by
// member, or deleted (member empty).
type bucketEvent struct {
	at     time.Time
	member string
}

// followBucket watches kv until the test ends.
func followBucket(t *testing.T, kv jetstream.KeyValue) *bucketLog {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := kv.WatchAll(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	b := &bucketLog{changed: make(chan struct{}), regs: make(map[string][]bucketEvent), live: make(map[string]bool)}
	var wg sync.WaitGroup
	wg.Go(func() {
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			b.apply(e)
		}
	})
	t.Cleanup(func() {
		cancel()
		w.Stop()
		wg.Wait()
	})
	return b
}

func (b *bucketLog) apply(e jetstream.KeyValueEntry) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	put := e.Operation() == jetstream.KeyValuePut
	switch k := e.Key(); {
	case strings.HasPrefix(k, memberPrefix):
		b.live[k[len(memberPrefix):]] = put
	case strings.HasPrefix(k, regPrefix):
		ev := bucketEvent{at: now}
		if put {
			var v value
			if json.Unmarshal(e.Value(), &v) != nil {
				return
			}
			ev.member = v.Member
		}
		k = k[len(regPrefix):]
		b.regs[k] = append(b.regs[k], ev)
	}
	close(b.changed)
	b.changed = make(chan struct{})
}

// member returns the member that holds the registration of CID key k
// now, or "".
func (b *bucketLog) member(k []byte) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	evs := b.regs[hex.EncodeToString(k)]
	if len(evs) == 0 {
		return ""
	}
	return evs[len(evs)-1].member
}

// movedAway returns when, after since, a member other than from first
// wrote the registration of k, or false if none did.
func (b *bucketLog) movedAway(k []byte, from string, since time.Time) (time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, ev := range b.regs[hex.EncodeToString(k)] {
		if ev.at.After(since) && ev.member != "" && ev.member != from {
			return ev.at, true
		}
	}
	return time.Time{}, false
}

// waitFor waits until cond holds, checked after every change of the
// bucket, or fails the test after timeout.
func (b *bucketLog) waitFor(t *testing.T, timeout time.Duration, what string, cond func(*bucketLog) bool) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		b.mu.Lock()
		ok, ch := cond(b), b.changed
		b.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("waiting for %s: not within %v", what, timeout)
		}
	}
}

// labPeer is one end of a pipe.
type labPeer struct {
	key  []byte // its CID key: the bucket's key of its registration
	conn *net.UDPConn
}

// labPipe is a relayed pipe between a dialer in peerA and an accepter in
// peerB.
type labPipe struct {
	d, a   labPeer
	dialer *quicpipe.Dialer
	acc    *quicpipe.Accepter
	dc, ac *quic.Conn
}

// peerConfig returns the Config of a peer in ns: its own socket there, the
// lab's relay, every pipe relayed.
func (l *fleetLab) peerConfig(ns *netlab.NS, id ed25519.PrivateKey, trusted ...ed25519.PublicKey) (*quicpipe.Config, labPeer, error) {
	c, err := ns.ListenUDP("udp4", "0.0.0.0:0")
	if err != nil {
		return nil, labPeer{}, err
	}
	p := labPeer{key: make([]byte, 32), conn: c}
	rand.Read(p.key)
	return &quicpipe.Config{
		RelayAddr:     fmt.Sprintf("%s:%d", labShared, labRelayPort),
		RelayKey:      l.relayKey,
		Identity:      id,
		TrustedPeers:  trusted,
		CIDKey:        p.key,
		Conn:          c,
		DisableDirect: true,
	}, p, nil
}

// openPipe makes an accepter in peerB and a dialer in peerA (both
// register with the member their flow reaches), waits until gate is closed
// if it is not nil, and dials, carrying the first flight in memory. The
// caller closes the pipe.
func (l *fleetLab) openPipe(ctx context.Context, gate <-chan struct{}) (_ *labPipe, err error) {
	p := &labPipe{}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	did, aid := quicpipe.GenerateIdentity(), quicpipe.GenerateIdentity()
	acfg, ap, err := l.peerConfig(l.peerB, aid, did.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, err
	}
	p.a = ap
	if p.acc, err = quicpipe.NewAccepter(ctx, acfg); err != nil {
		return nil, fmt.Errorf("accepter: %w", err)
	}
	dcfg, dp, err := l.peerConfig(l.peerA, did)
	if err != nil {
		return nil, err
	}
	p.d = dp
	if p.dialer, err = quicpipe.NewDialer(ctx, dcfg); err != nil {
		return nil, fmt.Errorf("dialer: %w", err)
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	type result struct {
		c   *quic.Conn
		err error
	}
	acc := make(chan result, 1)
	p.dc, err = p.dialer.Dial(ctx, aid.Public().(ed25519.PublicKey), func(_ context.Context, f *quicpipe.FirstFlight) error {
		go func() {
			c, err := p.acc.Accept(ctx, f)
			acc <- result{c, err}
		}()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	select {
	case r := <-acc:
		if r.err != nil {
			return nil, fmt.Errorf("accept: %w", r.err)
		}
		p.ac = r.c
	case <-ctx.Done():
		return nil, fmt.Errorf("accept: %w", ctx.Err())
	}
	return p, nil
}

func (p *labPipe) close() {
	for _, c := range []*quic.Conn{p.dc, p.ac} {
		if c != nil {
			c.CloseWithError(0, "")
		}
	}
	if p.dialer != nil {
		p.dialer.Close()
	}
	if p.acc != nil {
		p.acc.Close()
	}
	for _, c := range []*net.UDPConn{p.d.conn, p.a.conn} {
		if c != nil {
			c.Close()
		}
	}
}

// openPipes opens n pipes, conc at a time (openPipe, with gate), closed
// when the test ends; it fails the test unless every one connects.
func (l *fleetLab) openPipes(ctx context.Context, n, conc int, gate <-chan struct{}) []*labPipe {
	t := l.t
	t.Helper()
	start := time.Now()
	pipes := make([]*labPipe, n)
	errs := make([]error, n)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			pipes[i], errs[i] = l.openPipe(ctx, gate)
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, p := range pipes {
			if p != nil {
				wg.Go(p.close)
			}
		}
		wg.Wait()
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("opening %d pipes: %v", n, err)
	}
	opened := time.Now()
	// Each member writes its registrations to the bucket on its own time.
	defer func() {
		t.Logf("%d pipes open in %v, their registrations in the bucket %v later", n,
			opened.Sub(start).Round(time.Millisecond), time.Since(opened).Round(time.Millisecond))
	}()
	l.bucket.waitFor(t, 20*time.Second, "every peer's registration in the bucket", func(b *bucketLog) bool {
		for _, p := range pipes {
			for _, k := range [][]byte{p.d.key, p.a.key} {
				evs := b.regs[hex.EncodeToString(k)]
				if len(evs) == 0 || evs[len(evs)-1].member == "" {
					return false
				}
			}
		}
		return true
	})
	return pipes
}

// stall is a time a pipe's dialer waited between two reads of the echo,
// and when that wait ended.
type stall struct {
	d   time.Duration
	end time.Time
}

// stallMin is the shortest wait echo reports.
const stallMin = 250 * time.Millisecond

// echo sends size random bytes from the dialer over a new stream, paced to
// rate bytes per second if rate > 0; the accepter echoes them. It fails
// unless both the accepter and the dialer got the same bytes (SHA-256),
// and returns the waits between two reads of the dialer longer than
// stallMin.
func (p *labPipe) echo(ctx context.Context, size, rate int) ([]stall, error) {
	type sum struct {
		h   [32]byte
		n   int64
		err error
	}
	accepted := make(chan sum, 1)
	go func() {
		s, err := p.ac.AcceptStream(ctx)
		if err != nil {
			accepted <- sum{err: err}
			return
		}
		h := sha256.New()
		n, err := io.Copy(s, io.TeeReader(s, h))
		s.Close()
		accepted <- sum{h: [32]byte(h.Sum(nil)), n: n, err: err}
	}()
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	s, err := p.dc.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		s.SetDeadline(d)
	}
	start := time.Now()
	go func() {
		const chunk = 16 << 10
		for off := 0; off < len(data); off += chunk {
			if rate > 0 {
				due := start.Add(time.Duration(int64(off) * int64(time.Second) / int64(rate)))
				time.Sleep(time.Until(due))
			}
			if _, err := s.Write(data[off:min(off+chunk, len(data))]); err != nil {
				return
			}
		}
		s.Close()
	}()
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var got int
	var st []stall
	last := start
	for {
		n, err := s.Read(buf)
		if n > 0 {
			now := time.Now()
			if now.Sub(last) > stallMin {
				st = append(st, stall{now.Sub(last), now})
			}
			last = now
			h.Write(buf[:n])
			got += n
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, fmt.Errorf("echo: %d of %d bytes back, then %w", got, size, err)
		}
	}
	if [32]byte(h.Sum(nil)) != want || got != size {
		return st, fmt.Errorf("echo: %d bytes back of %d, SHA-256 differs", got, size)
	}
	select {
	case a := <-accepted:
		if a.err != nil {
			return st, fmt.Errorf("accepter: %w", a.err)
		}
		if a.h != want || a.n != int64(size) {
			return st, fmt.Errorf("accepter got %d bytes of %d, SHA-256 differs", a.n, size)
		}
	case <-ctx.Done():
		return st, fmt.Errorf("accepter: %w", ctx.Err())
	}
	return st, nil
}

// echoAll runs echo on every pipe at once and fails the test unless all
// succeed; it returns each pipe's stalls.
func echoAll(t *testing.T, ctx context.Context, pipes []*labPipe, size, rate int) [][]stall {
	t.Helper()
	stalls := make([][]stall, len(pipes))
	errs := make([]error, len(pipes))
	var wg sync.WaitGroup
	for i, p := range pipes {
		wg.Go(func() {
			stalls[i], errs[i] = p.echo(ctx, size, rate)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("pipe %d: %w", i, errs[i])
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return stalls
}

// TestFleetLabPipes runs 200 relayed pipes through the three members, with
// 256 KiB each way (64 KiB under the race detector) checked by SHA-256:
// at least a third of them must have their dialer and accepter held at
// different members (from the bucket), and more than one member must have
// forwarded; with XDP, the members' programs must have forwarded.
func TestFleetLabPipes(t *testing.T) {
	for _, tc := range []struct {
		name string
		xdp  bool
	}{{"userspace", false}, {"xdp", true}} {
		t.Run(tc.name, func(t *testing.T) {
			l := newFleetLab(t, labOptions{xdp: tc.xdp})
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			const n = 200
			size := 256 << 10
			if labRace {
				size = 64 << 10
			}
			start := time.Now()
			pipes := l.openPipes(ctx, n, 16, nil)
			opened := time.Since(start)

			held := make(map[string]int)
			cross := 0
			for _, p := range pipes {
				dm, am := l.bucket.member(p.d.key), l.bucket.member(p.a.key)
				held[dm]++
				held[am]++
				if dm != am {
					cross++
				}
			}
			t.Logf("%d pipes open in %v; peers held per member %v; %d pipes across members", n, opened.Round(time.Millisecond), held, cross)
			if cross*3 < n {
				t.Errorf("only %d of %d pipes have their ends at different members; want a third at least", cross, n)
			}

			start = time.Now()
			echoAll(t, ctx, pipes, size, 0)
			took := time.Since(start)
			t.Logf("%d KiB each way on each of %d pipes (SHA-256 checked) in %v", size>>10, n, took.Round(time.Millisecond))

			forwarding := 0
			for _, m := range l.members {
				user, kernel := l.forwarded(m)
				t.Logf("%s forwarded %.0f datagrams in userspace, %.0f by XDP", m.id, user, kernel)
				fwd := user
				if tc.xdp {
					fwd = kernel
				}
				if fwd > 0 {
					forwarding++
				}
			}
			if forwarding < 2 {
				path := "userspace"
				if tc.xdp {
					path = "its XDP program"
				}
				t.Errorf("%d members forwarded through %s; want 2 at least", forwarding, path)
			}
		})
	}
}

// TestFleetLabMemberKilled kills a member (its relay process, and its next
// hop on the edge router) while 30 pipes carry paced transfers: every pipe
// must complete with its SHA-256, and every peer held at the dead member
// must register at another member (it gets a stateless reset there). It
// logs the longest stall a pipe saw and how long after the kill the last
// of those peers registered again. With XDP, the survivors' programs must
// forward after the kill.
func TestFleetLabMemberKilled(t *testing.T) {
	t.Run("userspace", func(t *testing.T) { testMemberKilled(t, false) })
	t.Run("xdp", func(t *testing.T) { testMemberKilled(t, true) })
}

func testMemberKilled(t *testing.T, withXDP bool) {
	l := newFleetLab(t, labOptions{xdp: withXDP})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const n = 30
	pipes := l.openPipes(ctx, n, 10, nil)

	// Kill the member that holds the most peers.
	count := make(map[string]int)
	for _, p := range pipes {
		count[l.bucket.member(p.d.key)]++
		count[l.bucket.member(p.a.key)]++
	}
	victim := l.members[0]
	for _, m := range l.members {
		if count[m.id] > count[victim.id] {
			victim = m
		}
	}
	type orphan struct {
		pipe int
		side string
		key  []byte
	}
	var orphans []orphan
	for i, p := range pipes {
		for _, e := range []struct {
			side string
			key  []byte
		}{{"dialer", p.d.key}, {"accepter", p.a.key}} {
			if l.bucket.member(e.key) == victim.id {
				orphans = append(orphans, orphan{i, e.side, e.key})
			}
		}
	}
	t.Logf("peers held per member %v; killing %s (%d peers)", count, victim.id, len(orphans))
	before := make(map[string]string) // the other peers' members, by key
	for _, p := range pipes {
		for _, k := range [][]byte{p.d.key, p.a.key} {
			if m := l.bucket.member(k); m != victim.id {
				before[string(k)] = m
			}
		}
	}

	// About 14 s of transfer per pipe; the kill comes 3 s in, so that the
	// transfers also span the dead member's liveness expiry (6 s later).
	const rate = 96 << 10
	size := 14 * rate
	done := make(chan [][]stall, 1)
	go func() { done <- echoAll(t, ctx, pipes, size, rate) }()
	time.Sleep(3 * time.Second)
	var survivors []*labMember
	fwdBefore := make(map[*labMember][2]float64)
	var resetsBefore float64
	for _, m := range l.members {
		if m != victim {
			survivors = append(survivors, m)
			user, kernel := l.forwarded(m)
			fwdBefore[m] = [2]float64{user, kernel}
			resetsBefore += l.metrics(m)["quicpipe_relay_stateless_resets_total"]
		}
	}
	killed := time.Now()
	l.kill(victim)
	t.Logf("killed %s and withdrew its next hop in %v", victim.id, time.Since(killed).Round(time.Millisecond))

	var stalls [][]stall
	select {
	case stalls = <-done:
	case <-ctx.Done():
		t.Fatal("transfers did not end")
	}
	orphaned := make(map[int]bool)
	for _, o := range orphans {
		orphaned[o.pipe] = true
	}
	// The longest stall before the kill is the lab's baseline (pacing,
	// scheduling); after, with an end at the dead member or not.
	var baseline, after, afterOther stall
	var worst int
	for i, ss := range stalls {
		for _, st := range ss {
			switch {
			case st.end.Before(killed):
				if st.d > baseline.d {
					baseline = st
				}
			case orphaned[i]:
				if st.d > after.d {
					after, worst = st, i
				}
			default:
				if st.d > afterOther.d {
					afterOther = st
				}
			}
		}
	}
	t.Logf("every pipe completed, %d KiB each way at %d KiB/s (SHA-256 checked)", size>>10, rate>>10)
	// The orphans' HTTP/3 connections reach the survivors with the dead
	// member's relay CIDs: the survivors answer with stateless resets.
	var resets float64
	for _, m := range survivors {
		resets += l.metrics(m)["quicpipe_relay_stateless_resets_total"]
	}
	t.Logf("the survivors sent %.0f stateless resets after the kill", resets-resetsBefore)
	if resets <= resetsBefore {
		t.Errorf("the survivors sent no stateless reset for the dead member's relay CIDs")
	}
	for _, m := range survivors {
		user, kernel := l.forwarded(m)
		du, dk := user-fwdBefore[m][0], kernel-fwdBefore[m][1]
		t.Logf("%s forwarded %.0f datagrams in userspace and %.0f by XDP after the kill", m.id, du, dk)
		fwd := du
		if withXDP {
			fwd = dk
		}
		if fwd == 0 {
			t.Errorf("%s forwarded nothing (XDP %v) after the kill", m.id, withXDP)
		}
	}
	show := func(st stall) string {
		if st.d == 0 {
			return fmt.Sprintf("none over %v", stallMin)
		}
		if at := st.end.Sub(killed); at < 0 {
			return fmt.Sprintf("%v (ended %v before the kill)", st.d.Round(time.Millisecond), -at.Round(time.Millisecond))
		}
		return fmt.Sprintf("%v (ended %v after the kill)", st.d.Round(time.Millisecond), st.end.Sub(killed).Round(time.Millisecond))
	}
	t.Logf("longest stall: %s on the %d pipes with an end at %s (pipe %d); %s on the %d others; before the kill (baseline): %s",
		show(after), len(orphaned), victim.id, worst, show(afterOther), n-len(orphaned), show(baseline))

	var last time.Duration
	var missing []string
	for _, o := range orphans {
		at, ok := l.bucket.movedAway(o.key, victim.id, killed)
		if !ok {
			missing = append(missing, fmt.Sprintf("pipe %d's %s", o.pipe, o.side))
			continue
		}
		last = max(last, at.Sub(killed))
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d peers held at %s not registered at another member %v after the kill: %s",
			len(missing), len(orphans), victim.id, time.Since(killed).Round(time.Millisecond), strings.Join(missing, ", "))
	} else {
		t.Logf("every peer held at %s (%d) registered at another member %v after the kill", victim.id, len(orphans), last.Round(time.Millisecond))
	}
	// The route lost a next hop: the kernel's hash-threshold split moves
	// some flows between the surviving members too; their peers get a
	// stateless reset from their new member and register there.
	moved := 0
	for k, m := range before {
		if _, ok := l.bucket.movedAway([]byte(k), m, killed); ok {
			moved++
		}
	}
	t.Logf("%d of the %d peers held at the surviving members moved between them", moved, len(before))
}

// TestFleetLabNATSNodeDown kills one of the three NATS nodes (SIGKILL),
// the one that leads the bucket's stream, while 12 pipes carry paced
// transfers, opens 12 new pipes (new registrations, replicated by the two
// nodes left), then restarts the node on its store: the old pipes complete (the members forward with the
// table they have), the new ones connect and carry their data, no member
// declares another dead, and the restarted node catches up: a client
// connected to it alone reads every registration written while it was
// down, and the stream's leader reports its replica current.
func TestFleetLabNATSNodeDown(t *testing.T) {
	l := newFleetLab(t, labOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const n = 12
	old := l.openPipes(ctx, n, n, nil)
	const rate = 64 << 10
	size := 10 * rate // about 10 s
	done := make(chan [][]stall, 1)
	go func() { done <- echoAll(t, ctx, old, size, rate) }()

	time.Sleep(time.Second)
	// The node that leads the bucket's stream: the harder case, writes
	// wait for a new leader.
	js, err := jetstream.New(l.nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, "KV_"+DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	node := l.members[2]
	if c := stream.CachedInfo().Cluster; c != nil {
		for _, m := range l.members {
			if c.Leader == "n-"+m.id {
				node = m
			}
		}
	}
	node.nats.Kill()
	down := time.Now()
	t.Logf("NATS node of %s killed", node.id)
	// New pipes: their peers register at once, with two NATS nodes of
	// three; they dial once every member holds every registration (4n:
	// its own and the others'), as the members' metrics say. A dial made
	// while a member still lacks the other end's registration is lost
	// there, and waits for QUIC's handshake retransmissions, which back
	// off.
	type follow struct{ rewatched, complete time.Duration }
	follows := make([]follow, len(l.members))
	gate := make(chan struct{})
	var followed sync.WaitGroup
	followed.Go(func() {
		defer close(gate)
		for time.Since(down) < 60*time.Second {
			all := true
			for i, m := range l.members {
				ms, err := l.scrape(m)
				if err != nil {
					all = false
					continue
				}
				if follows[i].rewatched == 0 && ms["quicpipe_fleet_rewatches_total"] > 0 {
					follows[i].rewatched = time.Since(down)
				}
				if follows[i].complete == 0 && ms["quicpipe_relay_registrations"] >= 4*n {
					follows[i].complete = time.Since(down)
				}
				all = all && follows[i].complete != 0
			}
			if all {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	fresh := l.openPipes(ctx, n, n, gate)
	followed.Wait()
	for i, m := range l.members {
		if follows[i].complete == 0 {
			t.Errorf("%s did not hold the new registrations 60s after the node went down", m.id)
		}
		rewatched := "did not re-watch the bucket"
		if follows[i].rewatched != 0 {
			rewatched = fmt.Sprintf("re-watched the bucket %v after the node went down", follows[i].rewatched.Round(100*time.Millisecond))
		}
		t.Logf("%s: %s; held every new registration %v after", m.id, rewatched, follows[i].complete.Round(100*time.Millisecond))
	}
	cross := 0
	for _, p := range fresh {
		if l.bucket.member(p.d.key) != l.bucket.member(p.a.key) {
			cross++
		}
	}
	t.Logf("%d new pipes open and their registrations in the bucket %v after the node went down; %d across members",
		n, time.Since(down).Round(time.Millisecond), cross)
	echoAll(t, ctx, fresh, 128<<10, 0)
	t.Logf("the new pipes carried 128 KiB each way (SHA-256 checked)")

	time.Sleep(time.Until(down.Add(5 * time.Second))) // an outage of 5 s at least
	l.startNode(node)
	node.nats.Match(regexp.MustCompile(`natsd ready`), 30*time.Second)
	restarted := time.Now()
	t.Logf("NATS node of %s restarted on its store, %v after it went down", node.id, restarted.Sub(down).Round(time.Millisecond))

	// The restarted node's replica of the bucket is current once the
	// stream's leader says so.
	var replicas []string
	for {
		si, err := js.Stream(ctx, "KV_"+DefaultBucket)
		current := false
		replicas = nil
		if err == nil && si.CachedInfo().Cluster != nil {
			c := si.CachedInfo().Cluster
			replicas = append(replicas, c.Leader+" (leader)")
			current = c.Leader == "n-"+node.id
			for _, r := range c.Replicas {
				replicas = append(replicas, fmt.Sprintf("%s current=%v lag=%d", r.Name, r.Current, r.Lag))
				if r.Name == "n-"+node.id && r.Current && r.Lag == 0 {
					current = true
				}
			}
		}
		if current {
			break
		}
		if ctx.Err() != nil || time.Since(restarted) > 30*time.Second {
			t.Fatalf("the restarted node's replica of the bucket not current 30s after its restart: %s (%v)", strings.Join(replicas, "; "), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the restarted node's replica of the bucket current %v after its restart: %s",
		time.Since(restarted).Round(time.Millisecond), strings.Join(replicas, "; "))

	// And a client of that node alone reads every registration written
	// while it was down.
	nc, err := nats.Connect(node.natsURL(), nats.SetCustomDialer(nsDialer{l.edge}),
		nats.IgnoreDiscoveredServers(), nats.NoReconnect(), nats.Name("fleet lab, one node"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	njs, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := njs.KeyValue(ctx, DefaultBucket)
	if err != nil {
		t.Fatalf("the bucket through the restarted node: %v", err)
	}
	for i, p := range fresh {
		for _, k := range [][]byte{p.d.key, p.a.key} {
			e, err := kv.Get(ctx, regKey(k))
			if err != nil {
				t.Fatalf("new pipe %d's registration through the restarted node: %v", i, err)
			}
			var v value
			if err := json.Unmarshal(e.Value(), &v); err != nil || v.Member != l.bucket.member(k) {
				t.Fatalf("new pipe %d's registration through the restarted node: %s, want member %s", i, e.Value(), l.bucket.member(k))
			}
		}
	}

	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("transfers did not end")
	}
	t.Logf("the %d pipes open before the outage completed, %d KiB each way (SHA-256 checked)", n, size>>10)
	for _, m := range l.members {
		ms := l.metrics(m)
		t.Logf("%s: %.0f failed writes (retried), %.0f re-watches of the bucket", m.id,
			ms["quicpipe_fleet_write_errors_total"], ms["quicpipe_fleet_rewatches_total"])
		if gone := ms["quicpipe_fleet_members_gone_total"]; gone != 0 {
			t.Errorf("%s declared %.0f members dead while a NATS node was down", m.id, gone)
		}
	}
}

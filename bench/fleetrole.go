package main

// Roles of the fleet comparison (fleet.go):
//
//   - a relay started with -fleet (relayrole.go) is a fleet member: an
//     embedded NATS node in its process (package fleet/natsnode), a
//     fleet.Member on it as the relay's Replicator, a bucket of one replica;
//   - fleetload is another member of that fleet, in its own process, that
//     writes registrations to the bucket through its own fleet.Member
//     (Member.Put, what its relay does on a registration) and keeps its
//     liveness renewed, so that the relay holds them as remote
//     registrations applied through NATS;
//   - fleet3 is a fleet of three members in one process on loopback, each
//     with its own embedded NATS node in a 3-node cluster, for the
//     replication delay and the registration rates.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/fleet"
	"github.com/quicpipe/quicpipe/fleet/natsnode"
)

func init() {
	roles["fleetload"] = fleetLoadRole
	roles["fleet3"] = fleet3Role
}

// fleetBucket is the bucket of the single-node fleets (relay -fleet and
// fleetload).
const fleetBucket = "bench-fleet"

// memberNATS is where the NATS node of a relay started with -fleet listens
// by default, in the relay's namespace.
const memberNATS = "127.0.0.1:4222"

// fleetMembership is a relay's membership of a fleet whose NATS node runs
// in the relay's process.
type fleetMembership struct {
	node   *natsnode.Node
	member *fleet.Member
}

func newFleetMembership(dir, listen string) (*fleetMembership, error) {
	node, err := natsnode.Start(natsnode.Config{Name: "bench-member", StoreDir: dir, Listen: listen})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := fleet.New(ctx, fleet.Config{URL: node.ClientURL(), Bucket: fleetBucket, Member: "measured", Timeout: 20 * time.Second})
	if err != nil {
		node.Close()
		return nil, err
	}
	return &fleetMembership{node: node, member: m}, nil
}

func (fm *fleetMembership) start(r *quicpipe.Relay) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return fm.member.Start(ctx, r)
}

// waitApplied waits until the relay holds n registrations of other members.
func (fm *fleetMembership) waitApplied(r *quicpipe.Relay, n int, limit time.Duration) (any, error) {
	deadline := time.Now().Add(limit)
	for {
		st := r.Stats()
		if st.RemoteRegistrations >= n {
			return map[string]any{"remote": st.RemoteRegistrations, "member": fm.member.Stats()}, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the relay holds %d remote registrations after %v, want %d (member: %+v)",
				st.RemoteRegistrations, limit, n, fm.member.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (fm *fleetMembership) close() {
	fm.member.Close()
	fm.node.Close()
}

// applyRemote puts n registrations of 64 CIDs of a member "other" into
// r's table with Relay.ApplyRemote, forwarding to addresses from first on:
// the table a fleet member holds, without NATS.
func applyRemote(r *quicpipe.Relay, n int, first netip.Addr) (any, error) {
	next := binary.BigEndian.Uint32(first.AsSlice())
	for range n {
		var ip [4]byte
		binary.BigEndian.PutUint32(ip[:], next)
		next++
		rec := quicpipe.FleetRecord{Key: randomKey(), First: 1, Num: 64, Member: "other",
			Target: netip.AddrPortFrom(netip.AddrFrom4(ip), uint16(10000+next%50000))}
		if err := r.ApplyRemote(rec); err != nil {
			return nil, err
		}
	}
	return map[string]int{"remote": r.Stats().RemoteRegistrations}, nil
}

// fleetLoadRole is a member of the fleet at -nats that writes
// registrations to the bucket.
func fleetLoadRole(args []string) error {
	fs := flag.NewFlagSet("fleetload", flag.ContinueOnError)
	url := fs.String("nats", "", "NATS URL of the fleet")
	first := fs.String("targets", "10.77.128.1", "first target address; each registration forwards to the next address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	base, err := netip.ParseAddr(*first)
	if err != nil || !base.Is4() {
		return fmt.Errorf("-targets: want an IPv4 address, got %q", *first)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m, err := fleet.New(ctx, fleet.Config{URL: *url, Bucket: fleetBucket, Member: "loader", Timeout: 20 * time.Second})
	if err != nil {
		return err
	}
	defer m.Close()
	// A member needs a relay to apply the others' registrations to: a
	// real one, on loopback, serving nothing.
	cfg := benchRelayConfig(false)
	cfg.Replicator = m
	r, err := quicpipe.ListenRelay("127.0.0.1:0", cfg)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := m.Start(ctx, r); err != nil {
		return err
	}
	say("ready", nil)
	next := binary.BigEndian.Uint32(base.AsSlice())
	serveCommands(func(cmd string, a []string) (any, error) {
		if cmd == "replay" {
			return replayBucket(*url)
		}
		if cmd != "put" || len(a) != 2 {
			return nil, errors.New("usage: put REGISTRATIONS CIDS_PER_REGISTRATION")
		}
		n, err1 := strconv.Atoi(a[0])
		per, err2 := strconv.Atoi(a[1])
		if err1 != nil || err2 != nil || n < 1 || per < 1 {
			return nil, errors.New("usage: put REGISTRATIONS CIDS_PER_REGISTRATION")
		}
		w0 := m.Stats().Writes
		t0 := time.Now()
		for range n {
			var ip [4]byte
			binary.BigEndian.PutUint32(ip[:], next)
			next++
			m.Put(quicpipe.FleetRecord{Key: randomKey(), First: 1, Num: uint32(per),
				Target: netip.AddrPortFrom(netip.AddrFrom4(ip), uint16(10000+next%50000))})
		}
		deadline := time.Now().Add(600 * time.Second)
		for {
			st := m.Stats()
			if st.Writes-w0 >= uint64(n) && st.Pending == 0 {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("%d of %d registrations written after 600s (%+v)", st.Writes-w0, n, st)
			}
			time.Sleep(10 * time.Millisecond)
		}
		secs := time.Since(t0).Seconds()
		out := map[string]any{"written": n, "secs": secs}
		if bytes, values, err := bucketSize(*url, fleetBucket); err == nil {
			out["bucket_bytes"], out["bucket_values"] = bytes, values
		}
		return out, nil
	})
	return nil
}

// replayBucket joins the fleet at url as a new member with a relay of its
// own, and times Member.Start: it returns once the registrations already in
// the bucket are applied to the relay, as when a member starts or restarts.
func replayBucket(url string) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Second)
	defer cancel()
	m, err := fleet.New(ctx, fleet.Config{URL: url, Bucket: fleetBucket, Member: "joiner", Timeout: 20 * time.Second})
	if err != nil {
		return nil, err
	}
	defer m.Close()
	cfg := benchRelayConfig(true)
	cfg.Replicator = m
	r, err := quicpipe.ListenRelay("127.0.0.1:0", cfg)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	t0 := time.Now()
	if err := m.Start(ctx, r); err != nil {
		return nil, err
	}
	return map[string]any{"secs": time.Since(t0).Seconds(), "applied": r.Stats().RemoteRegistrations}, nil
}

// bucketSize returns the bytes and values JetStream stores for bucket.
func bucketSize(url, bucket string) (uint64, uint64, error) {
	nc, err := nats.Connect(url, nats.Timeout(10*time.Second))
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return 0, 0, err
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return 0, 0, err
	}
	return st.Bytes(), st.Values(), nil
}

func randomKey() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

// regClient is a peer's socket with an HTTP/3 connection to a relay over
// it, registering windows of CIDs through the relay's API (POST
// /v1/register, docs/PROTOCOL.md): the relay forwards them to the socket's
// address. Datagrams forwarded to the socket that are not QUIC packets (the
// fixed bit clear) are read with readProbe.
type regClient struct {
	conn   *net.UDPConn
	tr     *quic.Transport
	h3     *http3.Transport
	client *http.Client
	url    string
}

func newRegClient(relay string, relayKey []byte) (*regClient, error) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	tlsConf, err := quicpipe.ClientTLSConfig(nil, relayKey, http3.NextProtoH3)
	if err != nil {
		conn.Close()
		return nil, err
	}
	c := &regClient{conn: conn, tr: &quic.Transport{Conn: conn}, url: "https://" + relay + "/v1/register"}
	c.h3 = &http3.Transport{
		TLSClientConfig: tlsConf,
		QUICConfig:      &quic.Config{MaxIdleTimeout: 5 * time.Minute, KeepAlivePeriod: 10 * time.Second},
		Dial: func(ctx context.Context, addr string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			ua, err := net.ResolveUDPAddr("udp4", addr)
			if err != nil {
				return nil, err
			}
			return c.tr.DialEarly(ctx, ua, tlsCfg, cfg)
		},
	}
	c.client = &http.Client{Transport: c.h3, Timeout: 60 * time.Second}
	return c, nil
}

// register registers num CIDs of key, from index 1.
func (c *regClient) register(key []byte, num uint32) error {
	body, _ := json.Marshal(struct {
		Key   []byte `json:"key"`
		Num   uint32 `json:"num"`
		First uint32 `json:"first"`
	}{key, num, 1})
	resp, err := c.client.Post(c.url, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("register: %s: %s", resp.Status, b)
	}
	return nil
}

func (c *regClient) close() {
	c.h3.Close()
	c.tr.Close()
	c.conn.Close()
}

// probe is a datagram for the first CID of key: a short header with the
// fixed bit clear, so that the receiving quic.Transport hands it to
// ReadNonQUICPacket instead of dropping it. The relay forwards it by its
// CID as any short-header packet.
func probe(key []byte) ([]byte, error) {
	cid, err := quicpipe.DeriveCID(key, 1)
	if err != nil {
		return nil, err
	}
	p := make([]byte, 64)
	rand.Read(p)
	// Short header, fixed bit clear; a constant first byte, never 0x12
	// (forward.SleepMarker), which the relay takes for a sleep datagram.
	p[0] = 0x01
	copy(p[1:], cid[:])
	return p, nil
}

// arrival is a probe read by a regClient: its CID and when it came.
type arrival struct {
	cid [12]byte
	at  time.Time
}

// readProbes sends every probe the client's socket receives to ch until
// ctx ends.
func (c *regClient) readProbes(ctx context.Context, ch chan<- arrival) {
	buf := make([]byte, 2048)
	for {
		n, _, err := c.tr.ReadNonQUICPacket(ctx, buf)
		if err != nil {
			return
		}
		at := time.Now()
		if n < 13 {
			continue
		}
		var a arrival
		copy(a.cid[:], buf[1:13])
		a.at = at
		select {
		case ch <- a:
		default:
		}
	}
}

// clockReplicator is a member's Replicator that notes when the relay hands
// it the registration of a watched key: the moment the registration exists
// at that member.
type clockReplicator struct {
	*fleet.Member
	watch keyClock
}

func (c *clockReplicator) Put(rec quicpipe.FleetRecord) {
	c.watch.tick(rec.Key)
	c.Member.Put(rec)
}

// clockTable is the Table a member applies the others' registrations to:
// the relay, noting when the registration of a watched key is applied.
type clockTable struct {
	*quicpipe.Relay
	watch keyClock
}

func (c *clockTable) ApplyRemote(rec quicpipe.FleetRecord) error {
	err := c.Relay.ApplyRemote(rec)
	if err == nil {
		c.watch.tick(rec.Key)
	}
	return err
}

// keyClock notes the time of an event for the keys it watches.
type keyClock struct {
	mu sync.Mutex
	m  map[string]chan time.Time
}

func (k *keyClock) add(key []byte) chan time.Time {
	ch := make(chan time.Time, 1)
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]chan time.Time{}
	}
	k.m[string(key)] = ch
	k.mu.Unlock()
	return ch
}

func (k *keyClock) remove(key []byte) {
	k.mu.Lock()
	delete(k.m, string(key))
	k.mu.Unlock()
}

func (k *keyClock) tick(key []byte) {
	k.mu.Lock()
	ch := k.m[string(key)]
	k.mu.Unlock()
	if ch != nil {
		select {
		case ch <- time.Now():
		default:
		}
	}
}

// benchFleet is three relays on loopback, each a member of one fleet.
type benchFleet struct {
	relays  []*quicpipe.Relay
	members []*fleet.Member
	reps    []*clockReplicator
	tables  []*clockTable
	addrs   []string
}

func startBenchFleet(nodes []*natsnode.Node, bucket string, replicas int) (*benchFleet, error) {
	f := &benchFleet{}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for i, n := range nodes {
		var m *fleet.Member
		for {
			// A new cluster elects its JetStream meta leader first: until
			// then the bucket cannot be created.
			var err error
			m, err = fleet.New(ctx, fleet.Config{URL: n.ClientURL(), Bucket: bucket, Replicas: replicas,
				Member: fmt.Sprintf("m%d", i), Timeout: 5 * time.Second})
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				f.close()
				return nil, err
			}
			time.Sleep(200 * time.Millisecond)
		}
		f.members = append(f.members, m)
		rep := &clockReplicator{Member: m}
		cfg := benchRelayConfig(true)
		cfg.Replicator = rep
		r, err := quicpipe.ListenRelay("127.0.0.1:0", cfg)
		if err != nil {
			f.close()
			return nil, err
		}
		go r.Serve(context.Background())
		f.relays = append(f.relays, r)
		f.reps = append(f.reps, rep)
		t := &clockTable{Relay: r}
		f.tables = append(f.tables, t)
		f.addrs = append(f.addrs, r.LocalAddr().String())
		if err := m.Start(ctx, t); err != nil {
			f.close()
			return nil, err
		}
	}
	return f, nil
}

// close closes the relays and members; it may be called again.
func (f *benchFleet) close() {
	for _, r := range f.relays {
		r.Close()
	}
	for _, m := range f.members {
		m.Close()
	}
	f.relays, f.members = nil, nil
}

// startNATSCluster starts three clustered NATS nodes on loopback.
func startNATSCluster(dir string) ([]*natsnode.Node, error) {
	var ports []int
	var ls []net.Listener
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	var nodes []*natsnode.Node
	for i := range 3 {
		var routes []string
		for j, p := range ports {
			if j != i {
				routes = append(routes, fmt.Sprintf("127.0.0.1:%d", p))
			}
		}
		n, err := natsnode.Start(natsnode.Config{Name: fmt.Sprintf("n%d", i), StoreDir: filepath.Join(dir, strconv.Itoa(i)),
			ClusterListen: fmt.Sprintf("127.0.0.1:%d", ports[i]), Routes: routes, ReadyTimeout: 30 * time.Second})
		if err != nil {
			for _, n := range nodes {
				n.Close()
			}
			return nil, err
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// fleet3Result is what one fleet3 run measured.
type fleet3Result struct {
	Replicas int `json:"replicas"`
	// ForwardMs and AppliedMs are, per registration, the time from its
	// creation at one member (the relay hands it to its Replicator) until
	// another member forwards a datagram for it, and until that member has
	// it in its table.
	ForwardMs []float64 `json:"forward_ms"`
	AppliedMs []float64 `json:"applied_ms"`
	// ProbeGapUs is the mean time between probes: the resolution of
	// ForwardMs.
	ProbeGapUs float64 `json:"probe_gap_us"`
	// H3Rate is HTTP/3 registrations per second until every member held
	// them all; H3Answered until the last was answered.
	H3Rate, H3Answered float64
	// PutRate is registrations per second through Member.Put alone until
	// every other member applied them.
	PutRate float64
	// SingleRate is HTTP/3 registrations per second at one relay without
	// a fleet, the same driver.
	SingleRate float64 `json:",omitempty"`
	// BucketBytes and BucketValues are what the bucket stores (per copy).
	BucketBytes, BucketValues uint64
}

// fleet3Role runs fleets of three members on a 3-node NATS cluster in its
// process and measures them: "run REPLICAS DELAYS REGISTRATIONS SINGLE".
func fleet3Role(args []string) error {
	fs := flag.NewFlagSet("fleet3", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory for the NATS nodes' storage")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("-dir is required")
	}
	nodes, err := startNATSCluster(*dir)
	if err != nil {
		return err
	}
	defer func() {
		for _, n := range nodes {
			n.Close()
		}
	}()
	say("ready", nil)
	runs := 0
	serveCommands(func(cmd string, a []string) (any, error) {
		if cmd != "run" || len(a) != 4 {
			return nil, errors.New("usage: run REPLICAS DELAYS REGISTRATIONS SINGLE(0|1)")
		}
		var v [4]int
		for i := range a {
			if v[i], err = strconv.Atoi(a[i]); err != nil {
				return nil, err
			}
		}
		runs++
		return runFleet3(nodes, fmt.Sprintf("bench-%d", runs), v[0], v[1], v[2], v[3] == 1)
	})
	return nil
}

func runFleet3(nodes []*natsnode.Node, bucket string, replicas, delays, regs int, single bool) (*fleet3Result, error) {
	f, err := startBenchFleet(nodes, bucket, replicas)
	if err != nil {
		return nil, err
	}
	defer f.close()
	res := &fleet3Result{Replicas: replicas}
	rk := pub(benchKey("relay"))
	// Per member, a peer that registers and a sender registered there,
	// from whose address the member forwards probes.
	var peers, senders []*regClient
	defer func() {
		for _, c := range append(peers, senders...) {
			c.close()
		}
	}()
	for _, addr := range f.addrs {
		for _, list := range []*[]*regClient{&peers, &senders} {
			c, err := newRegClient(addr, rk)
			if err != nil {
				return nil, err
			}
			*list = append(*list, c)
		}
		if err := senders[len(senders)-1].register(randomKey(), 1); err != nil {
			return nil, fmt.Errorf("registering a sender: %w", err)
		}
	}
	if err := measureDelays(f, peers, senders, delays, res); err != nil {
		return nil, err
	}
	if res.H3Rate, res.H3Answered, err = fleetH3Rate(f, regs); err != nil {
		return nil, err
	}
	if res.PutRate, err = fleetPutRate(f, regs); err != nil {
		return nil, err
	}
	if res.BucketBytes, res.BucketValues, err = bucketSize(nodes[0].ClientURL(), bucket); err != nil {
		return nil, err
	}
	if single {
		if res.SingleRate, err = singleH3Rate(regs); err != nil {
			return nil, err
		}
	}
	// The next run uses a bucket of its own: remove this one.
	f.close()
	if nc, err := nats.Connect(nodes[0].ClientURL()); err == nil {
		if js, err := jetstream.New(nc); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			js.DeleteKeyValue(ctx, bucket)
			cancel()
		}
		nc.Close()
	}
	return res, nil
}

// measureDelays registers n keys, each at member i%3 through its peer, and
// probes member (i+1)%3 from its sender until the peer receives a probe.
func measureDelays(f *benchFleet, peers, senders []*regClient, n int, res *fleet3Result) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	arrivals := make([]chan arrival, len(peers))
	for i, p := range peers {
		arrivals[i] = make(chan arrival, 4096)
		go p.readProbes(ctx, arrivals[i])
	}
	var probes, probeTime float64
	for i := range n {
		a, b := i%len(f.relays), (i+1)%len(f.relays)
		key := randomKey()
		pkt, err := probe(key)
		if err != nil {
			return err
		}
		var cid [12]byte
		copy(cid[:], pkt[1:13])
		put := f.reps[a].watch.add(key)
		applied := f.tables[b].watch.add(key)
		regErr := make(chan error, 1)
		go func() { regErr <- peers[a].register(key, 64) }()
		var t0 time.Time
		answered := false
		select {
		case t0 = <-put:
		case err := <-regErr:
			// Answered already: the Replicator was handed the registration
			// before the answer, so its time is waiting too.
			answered = true
			if err != nil {
				return err
			}
			select {
			case t0 = <-put:
			default:
				return errors.New("the relay answered without handing the registration to its Replicator")
			}
		case <-time.After(10 * time.Second):
			return errors.New("no registration within 10s")
		}
		dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(f.addrs[b]))
		var t1 time.Time
		sent := 0
		deadline := t0.Add(10 * time.Second)
	probing:
		for {
			if _, err := senders[b].tr.WriteTo(pkt, dst); err != nil {
				return fmt.Errorf("sending a probe: %w", err)
			}
			sent++
			wait := time.NewTimer(100 * time.Microsecond)
			for {
				select {
				case ar := <-arrivals[a]:
					if ar.cid == cid {
						t1 = ar.at
						wait.Stop()
						break probing
					}
					continue
				case <-wait.C:
				}
				break
			}
			if time.Now().After(deadline) {
				seen := "not applied there"
				select {
				case <-applied:
					seen = "applied there"
				default:
				}
				return fmt.Errorf("member %d did not forward for a registration at member %d within 10s (registration %d of %d; %s; %d probes sent; member %d: %+v; its relay: %+v)",
					b, a, i+1, n, seen, sent, b, f.members[b].Stats(), f.relays[b].Stats())
			}
		}
		if !answered {
			if err := <-regErr; err != nil {
				return err
			}
		}
		var ta time.Time
		select {
		case ta = <-applied:
		case <-time.After(10 * time.Second):
			return errors.New("a forwarded registration was not seen applied")
		}
		f.reps[a].watch.remove(key)
		f.tables[b].watch.remove(key)
		res.ForwardMs = append(res.ForwardMs, t1.Sub(t0).Seconds()*1e3)
		res.AppliedMs = append(res.AppliedMs, ta.Sub(t0).Seconds()*1e3)
		if sent > 1 {
			probes += float64(sent - 1)
			probeTime += t1.Sub(t0).Seconds()
		}
		time.Sleep(2 * time.Millisecond)
	}
	if probes > 0 {
		res.ProbeGapUs = probeTime / probes * 1e6
	}
	return nil
}

// h3Drive registers n keys of 64 CIDs over HTTP/3 to the relays at addrs,
// spread evenly: per relay, 2 client connections with 8 requests in flight
// each. It returns when every request was answered.
func h3Drive(addrs []string, n int) error {
	rk := pub(benchKey("relay"))
	var clients []*regClient
	defer func() {
		for _, c := range clients {
			c.close()
		}
	}()
	for _, addr := range addrs {
		for range 2 {
			c, err := newRegClient(addr, rk)
			if err != nil {
				return err
			}
			if err := c.register(randomKey(), 1); err != nil { // connect first
				return err
			}
			clients = append(clients, c)
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	for _, c := range clients {
		for range 8 {
			wg.Go(func() {
				for next.Add(1) <= int64(n) {
					if err := c.register(randomKey(), 64); err != nil {
						select {
						case errc <- err:
						default:
						}
						return
					}
				}
			})
		}
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// fleetH3Rate drives n HTTP/3 registrations over the three members and
// returns the registrations per second until every member held all of
// them, and until the last was answered.
func fleetH3Rate(f *benchFleet, n int) (converged, answered float64, err error) {
	base := make([]int, len(f.relays))
	for i, r := range f.relays {
		base[i] = r.Stats().Registrations
	}
	// h3Drive's connecting registrations (one per client, 6 in all) count
	// as well.
	want := n + 2*len(f.relays)
	t0 := time.Now()
	if err := h3Drive(f.addrs, n); err != nil {
		return 0, 0, err
	}
	ta := time.Since(t0)
	if err := waitFleet(f, base, want, 300*time.Second); err != nil {
		return 0, 0, err
	}
	return float64(n) / time.Since(t0).Seconds(), float64(n) / ta.Seconds(), nil
}

// waitFleet waits until every relay holds want registrations more than
// base.
func waitFleet(f *benchFleet, base []int, want int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		done := true
		for i, r := range f.relays {
			if r.Stats().Registrations-base[i] < want {
				done = false
			}
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			var have []int
			for i, r := range f.relays {
				have = append(have, r.Stats().Registrations-base[i])
			}
			return fmt.Errorf("members hold %v new registrations after %v, want %d", have, limit, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// fleetPutRate hands n registrations to the members' Replicators directly
// (Member.Put, n/3 each, as their relays would) and returns the
// registrations per second until every other member applied them.
func fleetPutRate(f *benchFleet, n int) (float64, error) {
	per := n / len(f.members)
	base := make([]int, len(f.relays))
	for i, r := range f.relays {
		base[i] = r.Stats().Registrations
	}
	t0 := time.Now()
	for i, m := range f.members {
		for j := range per {
			m.Put(quicpipe.FleetRecord{Key: randomKey(), First: 1, Num: 64,
				Target: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 2, byte(i), byte(j)}), uint16(10000+j%50000))})
		}
	}
	// A member's own Puts are not in its relay's table: each relay gains
	// the others' registrations only.
	if err := waitFleet(f, base, per*(len(f.members)-1), 300*time.Second); err != nil {
		return 0, err
	}
	return float64(per*len(f.members)) / time.Since(t0).Seconds(), nil
}

// singleH3Rate is h3Drive's rate at one relay without a fleet (the same
// driver, all its clients on the one relay).
func singleH3Rate(n int) (float64, error) {
	r, err := quicpipe.ListenRelay("127.0.0.1:0", benchRelayConfig(true))
	if err != nil {
		return 0, err
	}
	defer r.Close()
	go r.Serve(context.Background())
	addr := r.LocalAddr().String()
	t0 := time.Now()
	if err := h3Drive([]string{addr, addr, addr}, n); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(t0).Seconds(), nil
}

// percentile returns the p-th percentile (0-100) of v, nearest rank.
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

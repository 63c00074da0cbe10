package fleet

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quicpipe/quicpipe"
)

const testBucket = "fleet-test"

// startNATS starts a NATS server with JetStream on loopback, its store in
// a temporary directory, and stops it at the end of the test.
func startNATS(t *testing.T, jetStream bool) string {
	url, _ := startNATSServer(t, jetStream)
	return url
}

// startNATSServer is startNATS, returning the server too.
func startNATSServer(t testing.TB, jetStream bool) (string, *server.Server) {
	t.Helper()
	s := runNATS(t, &server.Options{Host: "127.0.0.1", Port: -1, JetStream: jetStream, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	return s.ClientURL(), s
}

// runNATS starts a NATS server with opts and stops it at the end of the
// test.
func runNATS(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready within 10s")
	}
	return s
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// testMember is a relay on loopback and its fleet Member, each with its own
// NATS connection.
type testMember struct {
	relay   *quicpipe.Relay
	m       *Member
	nc      *nats.Conn
	relayID ed25519.PrivateKey
}

func newTestMember(t *testing.T, url, id string, ttl time.Duration) *testMember {
	t.Helper()
	return newTestMemberR(t, url, id, ttl, 1)
}

// newTestMemberR is newTestMember with a bucket of replicas copies, and
// its Config changed by the functions given.
func newTestMemberR(t *testing.T, url, id string, ttl time.Duration, replicas int, change ...func(*Config)) *testMember {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	var m *Member
	for {
		// A new cluster elects its JetStream leader first.
		cfg := Config{Conn: nc, Bucket: testBucket, Member: id, LivenessTTL: ttl, Timeout: 2 * time.Second,
			Replicas: replicas, Logger: testLogger(t)}
		for _, f := range change {
			f(&cfg)
		}
		m, err = New(ctx, cfg)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Cleanup(func() { m.Close() })
	_, relayID, _ := ed25519.GenerateKey(nil)
	r, err := quicpipe.ListenRelay("127.0.0.1:0", &quicpipe.RelayConfig{Identity: relayID, Replicator: m, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	go r.Serve(context.Background())
	if err := m.Start(ctx, r); err != nil {
		t.Fatal(err)
	}
	return &testMember{relay: r, m: m, nc: nc, relayID: relayID}
}

func (tm *testMember) addr() *net.UDPAddr { return tm.relay.LocalAddr().(*net.UDPAddr) }

// testMagic marks the datagrams a test forwards, so that a client's socket
// tells them from its own QUIC packets.
var testMagic = []byte("quicpipe fleet test datagram")

// sinkConn is a client's UDP socket as quic-go sees it: the test's
// datagrams (testMagic after a short header's CID) go to got instead.
type sinkConn struct {
	udp *net.UDPConn
	got chan []byte
}

func (c *sinkConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.udp.ReadFrom(b)
		if err == nil && n >= 13+len(testMagic) && b[0]&0x80 == 0 && bytes.Equal(b[13:13+len(testMagic)], testMagic) {
			select {
			case c.got <- bytes.Clone(b[:n]):
			default:
			}
			continue
		}
		return n, addr, err
	}
}

func (c *sinkConn) WriteTo(b []byte, a net.Addr) (int, error) { return c.udp.WriteTo(b, a) }
func (c *sinkConn) Close() error                              { return c.udp.Close() }
func (c *sinkConn) LocalAddr() net.Addr                       { return c.udp.LocalAddr() }
func (c *sinkConn) SetDeadline(t time.Time) error             { return c.udp.SetDeadline(t) }
func (c *sinkConn) SetReadDeadline(t time.Time) error         { return c.udp.SetReadDeadline(t) }
func (c *sinkConn) SetWriteDeadline(t time.Time) error        { return c.udp.SetWriteDeadline(t) }

// client speaks the registration API over HTTP/3 from its own UDP socket
// on loopback, which is also where the relay forwards its CIDs.
type client struct {
	sink *sinkConn
	http *http.Client
}

func newClient(t *testing.T, tm *testMember) *client {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	sink := &sinkConn{udp: udp, got: make(chan []byte, 64)}
	tr := &quic.Transport{Conn: sink}
	tlsConf, err := quicpipe.ClientTLSConfig(nil, tm.relayID.Public().(ed25519.PublicKey), http3.NextProtoH3)
	if err != nil {
		t.Fatal(err)
	}
	relayAddr := tm.addr()
	rt := &http3.Transport{
		TLSClientConfig: http3.ConfigureTLSConfig(tlsConf),
		QUICConfig:      &quic.Config{HandshakeIdleTimeout: 5 * time.Second},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			return tr.Dial(ctx, relayAddr, tlsCfg, cfg)
		},
	}
	t.Cleanup(func() {
		rt.Close()
		tr.Close()
		udp.Close()
	})
	return &client{sink: sink, http: &http.Client{Transport: rt, Timeout: 10 * time.Second}}
}

func (c *client) addr() string { return c.sink.udp.LocalAddr().String() }

// do sends a registration request (POST) or an unregistration (DELETE)
// and requires a 2xx answer.
func (c *client) do(t *testing.T, method string, key []byte, first, num int) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"key": base64.StdEncoding.EncodeToString(key), "first": first, "num": num})
	req, err := http.NewRequest(method, "https://quicpipe/v1/register", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s: status %d: %s", method, resp.StatusCode, data)
	}
}

// testDatagram is a short-header datagram for cid, marked with testMagic.
func testDatagram(cid quicpipe.CID) []byte {
	b := append([]byte{0x40}, cid[:]...)
	b = append(b, testMagic...)
	return append(b, make([]byte, 64)...)
}

// waitFor polls cond every millisecond until it holds, or fails the test
// after limit. It returns how long it took.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

func newKey(t *testing.T) []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

// TestFleetForward registers two peers at member a and has member b
// forward between them: b learns a's registrations from the bucket, follows
// a window slide and an unregistration, and a refresh at a writes nothing.
func TestFleetForward(t *testing.T) {
	url := startNATS(t, true)
	a := newTestMember(t, url, "a", 2*time.Second)
	b := newTestMember(t, url, "b", 2*time.Second)
	sink, sender := newClient(t, a), newClient(t, a)
	k1, k2 := newKey(t), newKey(t)

	t0 := time.Now()
	sink.do(t, http.MethodPost, k1, 1, 8)
	answered := time.Since(t0)
	waitFor(t, 5*time.Second, "b holds a's first registration", func() bool {
		rec, ok := b.relay.FleetRecord(k1)
		return ok && rec.Member == "a" && rec.Target.String() == sink.addr() && rec.First == 1 && rec.Num == 8
	})
	t.Logf("registration at a: answered after %v, applied at b %v after the request", answered, time.Since(t0))
	sender.do(t, http.MethodPost, k2, 1, 8)
	waitFor(t, 5*time.Second, "b holds a's second registration", func() bool {
		_, ok := b.relay.FleetRecord(k2)
		return ok
	})
	if got := b.relay.Stats().RemoteRegistrations; got != 2 {
		t.Fatalf("b: %d remote registrations, want 2", got)
	}
	if got := a.relay.Stats().RemoteRegistrations; got != 0 {
		t.Fatalf("a: %d remote registrations, want 0", got)
	}

	// The sender, a target of a live registration, sends to b for a CID of
	// the sink's key: b forwards it to the sink, registered at a.
	cid, _ := quicpipe.DeriveCID(k1, 3)
	forwarded := func(to *net.UDPAddr) bool { return forwards(t, sender, sink, cid, to) }
	if !forwarded(b.addr()) {
		t.Fatalf("b did not forward a datagram for a's registration; b's stats: %+v", b.relay.Stats().Dropped)
	}
	// A reader adds its batch's counts after the batch is on the wire, so
	// the sink may see the datagram a moment before b counts it.
	waitFor(t, time.Second, "b counts the forwarded datagram", func() bool { return b.relay.Stats().Forwarded > 0 })

	// A refresh (same window, same address) writes nothing. (b may have
	// seen the two registrations before a's writer counted them.)
	waitFor(t, 5*time.Second, "a counts its two writes", func() bool { return a.m.Stats().Writes >= 2 })
	writes := a.m.Stats().Writes
	sink.do(t, http.MethodPost, k1, 1, 8)
	time.Sleep(300 * time.Millisecond)
	if got := a.m.Stats().Writes; got != writes {
		t.Fatalf("a refresh wrote %d entries to the bucket, want 0", got-writes)
	}

	// A window slide is written, and b follows it.
	t0 = time.Now()
	sink.do(t, http.MethodPost, k1, 5, 8)
	waitFor(t, 5*time.Second, "b follows the window slide", func() bool {
		rec, ok := b.relay.FleetRecord(k1)
		return ok && rec.First == 5 && rec.Num == 8
	})
	t.Logf("window slide at a applied at b %v after the request", time.Since(t0))
	// b may see the entry before a's writer has counted it.
	waitFor(t, 5*time.Second, "a counts its write of the slide", func() bool { return a.m.Stats().Writes > writes })
	time.Sleep(100 * time.Millisecond)
	if got := a.m.Stats().Writes; got != writes+1 {
		t.Fatalf("a window slide wrote %d entries, want 1", got-writes)
	}

	// Unregistering at a removes the registration at b.
	t0 = time.Now()
	sink.do(t, http.MethodDelete, k1, 0, 1)
	waitFor(t, 5*time.Second, "b removes the unregistered key", func() bool {
		_, ok := b.relay.FleetRecord(k1)
		return !ok
	})
	t.Logf("unregistration at a applied at b %v after the request", time.Since(t0))
	if forwarded(b.addr()) {
		t.Fatal("b forwarded a datagram for an unregistered key")
	}
	if got := b.relay.Stats().RemoteRegistrations; got != 1 {
		t.Fatalf("b: %d remote registrations, want 1", got)
	}
	if s := b.m.Stats(); s.Malformed+s.Foreign+s.Refused != 0 {
		t.Fatalf("b ignored entries: %+v", s)
	}
}

// forwards sends datagrams for cid from sender to the relay at to, and
// reports whether one reaches sink within 2s.
func forwards(t *testing.T, sender, sink *client, cid quicpipe.CID, to *net.UDPAddr) bool {
	t.Helper()
	dg := testDatagram(cid)
	for range 20 {
		if _, err := sender.sink.udp.WriteTo(dg, to); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-sink.sink.got:
			if !bytes.Equal(got, dg) {
				t.Fatalf("sink got %x, want %x", got, dg)
			}
			return true
		case <-time.After(100 * time.Millisecond):
		}
	}
	return false
}

// TestFleetNATSDown stops NATS: the members cannot tell whether the others
// are alive, so they keep the registrations they have and go on
// forwarding for them.
func TestFleetNATSDown(t *testing.T) {
	const ttl = time.Second
	url, s := startNATSServer(t, true)
	a := newTestMember(t, url, "a", ttl)
	b := newTestMember(t, url, "b", ttl)
	sink, sender := newClient(t, a), newClient(t, a)
	k1, k2 := newKey(t), newKey(t)
	sink.do(t, http.MethodPost, k1, 1, 8)
	sender.do(t, http.MethodPost, k2, 1, 8)
	waitFor(t, 5*time.Second, "b holds a's registrations", func() bool {
		_, ok1 := b.relay.FleetRecord(k1)
		_, ok2 := b.relay.FleetRecord(k2)
		return ok1 && ok2
	})
	s.Shutdown()
	time.Sleep(3 * ttl)
	if _, ok := b.relay.FleetRecord(k1); !ok {
		t.Fatal("b dropped a's registration while NATS was down")
	}
	cid, _ := quicpipe.DeriveCID(k1, 2)
	if !forwards(t, sender, sink, cid, b.addr()) {
		t.Fatal("b stopped forwarding for a's registration while NATS was down")
	}
	if g := b.m.Stats().MembersGone; g != 0 {
		t.Fatalf("b declared %d members dead while NATS was down", g)
	}
}

// TestFleetMemberDies stops member a without cleanup (its NATS connection
// cut, its relay closed): b removes a's registrations once a's liveness key
// is not renewed within the TTL, and deletes them from the bucket.
func TestFleetMemberDies(t *testing.T) {
	const ttl = time.Second
	url := startNATS(t, true)
	a := newTestMember(t, url, "a", ttl)
	b := newTestMember(t, url, "b", ttl)
	c := newClient(t, a)
	k := newKey(t)
	c.do(t, http.MethodPost, k, 1, 8)
	waitFor(t, 5*time.Second, "b holds a's registration", func() bool {
		_, ok := b.relay.FleetRecord(k)
		return ok
	})

	a.nc.Close()
	a.relay.Close()
	d := waitFor(t, ttl+time.Second, "b removes the dead member's registration", func() bool {
		_, ok := b.relay.FleetRecord(k)
		return !ok
	})
	t.Logf("dead member's registration removed after %v (TTL %v)", d, ttl)
	if s := b.m.Stats(); s.MembersGone != 1 || s.Removed != 1 {
		t.Fatalf("b: %+v, want 1 member gone and 1 registration removed", s)
	}
	kv := openBucket(t, url)
	waitFor(t, 5*time.Second, "the dead member's entries leave the bucket", func() bool {
		_, err1 := kv.Get(context.Background(), regKey(k))
		_, err2 := kv.Get(context.Background(), memberKey("a"))
		return errors.Is(err1, jetstream.ErrKeyNotFound) && errors.Is(err2, jetstream.ErrKeyNotFound)
	})
}

// TestFleetMemberLeaves closes member a cleanly: b removes its
// registrations at once, without waiting for the TTL.
func TestFleetMemberLeaves(t *testing.T) {
	const ttl = 10 * time.Second
	url := startNATS(t, true)
	a := newTestMember(t, url, "a", ttl)
	b := newTestMember(t, url, "b", ttl)
	c := newClient(t, a)
	k := newKey(t)
	c.do(t, http.MethodPost, k, 1, 8)
	waitFor(t, 5*time.Second, "b holds a's registration", func() bool {
		_, ok := b.relay.FleetRecord(k)
		return ok
	})
	if err := a.m.Close(); err != nil {
		t.Fatal(err)
	}
	d := waitFor(t, 2*time.Second, "b removes the departed member's registration", func() bool {
		_, ok := b.relay.FleetRecord(k)
		return !ok
	})
	t.Logf("departed member's registration removed after %v", d)
}

func openBucket(t *testing.T, url string) jetstream.KeyValue {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, testBucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// TestFleetBadEntries puts malformed and foreign entries into the bucket:
// the member ignores and counts each, and a good record after them still
// applies.
func TestFleetBadEntries(t *testing.T) {
	url := startNATS(t, true)
	a := newTestMember(t, url, "a", 2*time.Second)
	kv := openBucket(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hexKey := strings.Repeat("ab", 32)
	good := `{"v":1,"member":"x","first":1,"num":4,"addr":"127.0.0.1:9"}`
	// Each entry is put once the previous one is counted: the bucket keeps
	// one value per key, and a watcher may skip a value replaced before it
	// was delivered.
	put := func(key, value string, counter func(Stats) uint64, what string) {
		t.Helper()
		before := counter(a.m.Stats())
		if _, err := kv.Put(ctx, key, []byte(value)); err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		waitFor(t, 5*time.Second, what+" entry "+key+" "+value+" counted", func() bool { return counter(a.m.Stats()) == before+1 })
	}
	malformed := func(s Stats) uint64 { return s.Malformed }
	for _, e := range []struct{ key, value string }{
		{"r.zz", good},              // not hex
		{"r.ABAB" + hexKey, good},   // upper case
		{"r." + hexKey, "not json"}, // undecodable
		{"r." + hexKey, `{"v":2}`},  // another version
		{"r." + hexKey, strings.Replace(good, `"x"`, `"a b"`, 1)},           // bad member
		{"r." + hexKey, strings.Replace(good, "127.0.0.1:9", "nowhere", 1)}, // bad address
		{"r." + hexKey, strings.Repeat(" ", 2000) + good},                   // too long
		{"m." + strings.Repeat("m", 65), "x"},                               // bad member id
	} {
		put(e.key, e.value, malformed, "malformed")
	}
	foreign := func(s Stats) uint64 { return s.Foreign }
	put("other.thing", good, foreign, "foreign")
	put("zzz", "x", foreign, "foreign")
	refused := func(s Stats) uint64 { return s.Refused }
	for _, v := range []string{
		strings.Replace(good, `"num":4`, `"num":0`, 1),             // empty window
		strings.Replace(good, `"num":4`, `"num":100000`, 1),        // window too large
		strings.Replace(good, `"first":1`, `"first":0`, 1),         // index 0
		strings.Replace(good, "127.0.0.1:9", "0.0.0.0:0", 1),       // not a unicast target
		strings.Replace(good, "127.0.0.1:9", a.addr().String(), 1), // the relay itself
	} {
		put("r."+hexKey, v, refused, "refused")
	}
	if n := a.relay.Stats().Registrations; n != 0 {
		t.Fatalf("relay holds %d registrations after bad entries, want 0", n)
	}
	if _, err := kv.Put(ctx, "r."+hexKey, []byte(good)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a good record applies after bad ones", func() bool {
		rec, ok := a.relay.FleetRecord(bytes.Repeat([]byte{0xab}, 32))
		return ok && rec.Member == "x" && rec.Num == 4
	})
	if s := a.m.Stats(); s.Applied != 1 {
		t.Fatalf("stats %+v, want 1 applied", s)
	}
}

// TestNewUnreachable: a member that cannot reach NATS, or reaches one
// without JetStream, gets a clear error within its timeout.
func TestNewUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := fmt.Sprintf("nats://%s", l.Addr())
	l.Close()
	start := time.Now()
	_, err = New(context.Background(), Config{URL: dead, Timeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "cannot connect to NATS at "+dead) {
		t.Fatalf("New with NATS down = %v, want a 'cannot connect' error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("New took %v to fail", d)
	}
	t.Logf("unreachable NATS: %v (after %v)", err, time.Since(start))

	url := startNATS(t, false)
	start = time.Now()
	_, err = New(context.Background(), Config{URL: url, Timeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "JetStream") {
		t.Fatalf("New with JetStream off = %v, want an error naming JetStream", err)
	}
	t.Logf("no JetStream: %v (after %v)", err, time.Since(start))

	if _, err := New(context.Background(), Config{}); err == nil {
		t.Fatal("New without Conn or URL succeeded")
	}
	if _, err := New(context.Background(), Config{URL: url, Member: "bad id"}); err == nil {
		t.Fatal("New accepted a bad member id")
	}
}

func (c *sinkConn) SetReadBuffer(n int) error  { return c.udp.SetReadBuffer(n) }
func (c *sinkConn) SetWriteBuffer(n int) error { return c.udp.SetWriteBuffer(n) }

// TestFleetNATSRestart restarts NATS (same port, same store): the members
// reconnect, and a registration made after the restart reaches the other
// member.
func TestFleetNATSRestart(t *testing.T) {
	const ttl = 2 * time.Second
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	opts := &server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true}
	start := func() *server.Server { return runNATS(t, opts) }
	s := start()
	url := s.ClientURL()
	a := newTestMember(t, url, "a", ttl)
	b := newTestMember(t, url, "b", ttl)
	c1, c2 := newClient(t, a), newClient(t, a)
	k1, k2 := newKey(t), newKey(t)
	c1.do(t, http.MethodPost, k1, 1, 8)
	waitFor(t, 5*time.Second, "b holds a's first registration", func() bool {
		_, ok := b.relay.FleetRecord(k1)
		return ok
	})
	s.Shutdown()
	s.WaitForShutdown()
	start()
	waitFor(t, 10*time.Second, "members reconnect", func() bool { return a.nc.IsConnected() && b.nc.IsConnected() })
	c2.do(t, http.MethodPost, k2, 1, 8)
	d := waitFor(t, 15*time.Second, "b holds a registration made after the restart", func() bool {
		_, ok := b.relay.FleetRecord(k2)
		return ok
	})
	t.Logf("registration after the restart applied at b after %v", d)
	if n := b.m.Stats().Rewatches; n < 1 {
		t.Fatalf("b watched the bucket anew %d times, want at least 1", n)
	}
	if _, ok := b.relay.FleetRecord(k1); !ok {
		t.Fatal("b lost the registration made before the restart")
	}
}

// TestFleetMarkersExpire: a registration removed from the bucket leaves a
// marker that the watchers see (the other member drops it) and that expires
// after MarkerTTL, so removed keys do not pile up in the bucket.
func TestFleetMarkersExpire(t *testing.T) {
	url := startNATS(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	short := func(c *Config) { c.MarkerTTL = time.Second }
	a := newTestMemberR(t, url, "a", 10*time.Second, 1, short)
	b := newTestMemberR(t, url, "b", 10*time.Second, 1, short)
	c := newClient(t, a)
	k := newKey(t)
	c.do(t, http.MethodPost, k, 1, 8)
	waitFor(t, 5*time.Second, "b holds a's registration", func() bool {
		_, ok := b.relay.FleetRecord(k)
		return ok
	})
	js, err := jetstream.New(b.nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, "KV_"+testBucket)
	if err != nil {
		t.Fatal(err)
	}
	subject := "$KV." + testBucket + ".r." + hex.EncodeToString(k)
	msgs := func() uint64 {
		info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Subjects[subject]
	}
	if n := msgs(); n != 1 {
		t.Fatalf("%d messages for the registration's key, want 1", n)
	}
	c.do(t, http.MethodDelete, k, 0, 0)
	waitFor(t, 5*time.Second, "b drops the removed registration", func() bool {
		_, ok := b.relay.FleetRecord(k)
		return !ok
	})
	d := waitFor(t, 10*time.Second, "the removal's marker expires", func() bool { return msgs() == 0 })
	t.Logf("marker gone %v after the removal was seen", d)
}

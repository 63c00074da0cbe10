package fleet

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quicpipe/quicpipe"
)

// BenchmarkMailboxHold measures what holding b.N mailboxes costs a member
// and its NATS server (both in this process): the time of one Hold (a
// subscription, a take and a round trip to the server) and the heap per
// held mailbox, with every mailbox held at once. Run it with
// -benchtime=100000x for the figure at a relay's default MaxMailboxes.
func BenchmarkMailboxHold(b *testing.B) {
	srv := runNATS(b, &server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	m := &Member{
		id: "bench", nc: nc, log: slog.New(slog.DiscardHandler),
		mboxPrefix: testBucket + ".mbox.",
		holds:      make(map[string]*mailboxHold),
		mboxIn:     make(chan *nats.Msg, mailboxInbox),
	}
	keys := make([]ed25519.PublicKey, b.N)
	for i := range keys {
		keys[i] = make([]byte, ed25519.PublicKeySize)
		rand.Read(keys[i])
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	ctx := context.Background()
	b.ResetTimer()
	for _, k := range keys {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := m.Hold(hctx, k); err != nil {
			b.Fatal(err)
		}
		cancel()
	}
	b.StopTimer()
	// The server has every subscription: a round trip after the last.
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(b.N), "heap-B/mailbox")
	for _, k := range keys {
		m.Release(k)
	}
	if n := len(m.holds); n != 0 {
		b.Fatalf("%d holds left after releasing all", n)
	}
}

// BenchmarkMailboxInterest measures what b.N held mailboxes cost the NATS
// servers alone: b.N subscriptions sent over a raw connection (no client
// library) to one server ("server"), or to the first of two clustered
// servers, which both keep the interest ("route": the heap of both). Run it
// with -benchtime=100000x.
func BenchmarkMailboxInterest(b *testing.B) {
	b.Run("server", func(b *testing.B) { benchInterest(b, false) })
	b.Run("route", func(b *testing.B) { benchInterest(b, true) })
}

func benchInterest(b *testing.B, cluster bool) {
	start := func(opts *server.Options) *server.Server { return runNATS(b, opts) }
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true}
	if cluster {
		opts.Cluster = server.ClusterOpts{Name: "bench", Host: "127.0.0.1", Port: -1}
	}
	s1 := start(opts)
	var s2 *server.Server
	if cluster {
		u, err := url.Parse(fmt.Sprintf("nats://127.0.0.1:%d", s1.ClusterAddr().Port))
		if err != nil {
			b.Fatal(err)
		}
		s2 = start(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "bench", Host: "127.0.0.1", Port: -1}, Routes: []*url.URL{u}})
		deadline := time.Now().Add(10 * time.Second)
		for s1.NumRoutes() == 0 || s2.NumRoutes() == 0 {
			if time.Now().After(deadline) {
				b.Fatal("the servers did not route within 10s")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	c, err := net.Dial("tcp", s1.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil { // INFO
		b.Fatal(err)
	}
	w := bufio.NewWriter(c)
	fmt.Fprintf(w, "CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
	key := make([]byte, ed25519.PublicKeySize)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for i := range b.N {
		rand.Read(key)
		fmt.Fprintf(w, "SUB quicpipe-fleet.mbox.%s %d\r\n", hex.EncodeToString(key), i+1)
	}
	fmt.Fprintf(w, "PING\r\n")
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			b.Fatal(err)
		}
		if strings.HasPrefix(line, "PONG") {
			break
		}
	}
	if s2 != nil {
		deadline := time.Now().Add(30 * time.Second)
		for s2.NumSubscriptions() < uint32(b.N) {
			if time.Now().After(deadline) {
				b.Fatalf("the second server has %d of %d subscriptions after 30s", s2.NumSubscriptions(), b.N)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(b.N), "heap-B/mailbox")
}

// BenchmarkMailboxPost measures a mailbox post from its request to its
// answer, the flight written to the holder: "local" with the mailbox held
// at the member posted to, "handover" with it held at another member (one
// NATS request/reply more). The holder and the poster are bare HTTP/3
// clients on loopback; compare the two in one run.
func BenchmarkMailboxPost(b *testing.B) {
	url, _ := startNATSServer(b, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	mcfg := &quicpipe.MailboxConfig{PostRate: 1e9, PostBurst: 1 << 30}
	members := make([]*mailboxMember, 2)
	for i, name := range []string{"a", "b"} {
		members[i] = newMailboxMemberB(b, ctx, url, name, mcfg)
	}
	flight := benchFlight(b, ctx, members[0])
	for _, c := range []struct {
		name   string
		holder *mailboxMember
	}{{"local", members[0]}, {"handover", members[1]}} {
		b.Run(c.name, func(b *testing.B) {
			key := quicpipe.GenerateIdentity()
			holdMailbox(b, ctx, c.holder, key)
			poster := rawH3(b, ctx, members[0])
			b.ResetTimer()
			for range b.N {
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost,
					"https://"+quicpipe.ServerName+"/v1/mailbox/"+quicpipe.EncodeKey(key.Public().(ed25519.PublicKey)),
					bytes.NewReader(flight))
				resp, err := poster.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusNoContent {
					b.Fatalf("post: status %d", resp.StatusCode)
				}
			}
		})
	}
}

// newMailboxMemberB is newMailboxMember for a benchmark.
func newMailboxMemberB(b *testing.B, ctx context.Context, url, member string, mcfg *quicpipe.MailboxConfig) *mailboxMember {
	b.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	m, err := New(ctx, Config{Conn: nc, Bucket: testBucket, Member: member})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	id := quicpipe.GenerateIdentity()
	r, err := quicpipe.ListenRelay("127.0.0.1:0", &quicpipe.RelayConfig{Identity: id, Replicator: m, Mailbox: mcfg, MailboxRouter: m})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	go r.Serve(context.Background())
	if err := m.Start(ctx, r); err != nil {
		b.Fatal(err)
	}
	return &mailboxMember{relay: r, m: m, nc: nc, id: id}
}

// rawH3 opens a bare HTTP/3 connection to tm's relay.
func rawH3(b *testing.B, ctx context.Context, tm *mailboxMember) *http3.ClientConn {
	b.Helper()
	cc, _ := rawH3Conn(b, ctx, tm)
	return cc
}

func rawH3Conn(b *testing.B, ctx context.Context, tm *mailboxMember) (*http3.ClientConn, *quic.Conn) {
	b.Helper()
	tlsConf, err := quicpipe.ClientTLSConfig(nil, tm.id.Public().(ed25519.PublicKey), http3.NextProtoH3)
	if err != nil {
		b.Fatal(err)
	}
	qc, err := quic.DialAddr(ctx, tm.relay.LocalAddr().String(), tlsConf, &quic.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { qc.CloseWithError(0, "") })
	return (&http3.Transport{}).NewClientConn(qc), qc
}

// holdMailbox opens key's mailbox at tm over a bare HTTP/3 connection,
// signed as docs/PROTOCOL.md says, and discards what it receives until the
// benchmark ends.
func holdMailbox(b *testing.B, ctx context.Context, tm *mailboxMember, key ed25519.PrivateKey) {
	b.Helper()
	cc, qc := rawH3Conn(b, ctx, tm)
	pub := key.Public().(ed25519.PublicKey)
	cs := qc.ConnectionState().TLS
	ekm, err := cs.ExportKeyingMaterial("EXPORTER-quicpipe-mailbox", pub, 32)
	if err != nil {
		b.Fatal(err)
	}
	msg := append(append([]byte("quicpipe mailbox open v1\x00"), pub...), ekm...)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+quicpipe.ServerName+"/v1/mailbox/"+quicpipe.EncodeKey(pub), nil)
	req.Header.Set("Quicpipe-Signature", base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, msg)))
	resp, err := cc.RoundTrip(req)
	if err != nil {
		b.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("open: status %d", resp.StatusCode)
	}
	go io.Copy(io.Discard, resp.Body)
	b.Cleanup(func() { resp.Body.Close() })
}

// benchFlight returns a real first flight in binary form: a dialer's at tm,
// taken before delivery.
func benchFlight(b *testing.B, ctx context.Context, tm *mailboxMember) []byte {
	b.Helper()
	d, err := quicpipe.NewDialer(ctx, tm.peerConfig(quicpipe.GenerateIdentity()))
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	var flight []byte
	errTaken := errors.New("flight taken")
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = d.Dial(dctx, quicpipe.GenerateIdentity().Public().(ed25519.PublicKey), func(_ context.Context, f *quicpipe.FirstFlight) error {
		flight, err = f.MarshalBinary()
		if err != nil {
			return err
		}
		return errTaken
	})
	if !errors.Is(err, errTaken) {
		b.Fatalf("taking a first flight: %v", err)
	}
	return flight
}

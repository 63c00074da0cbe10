package fleet

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// BenchmarkMailboxHold measures what holding b.N mailboxes costs a member
// and its NATS server (both in this process): the time of one Hold (a
// subscription, a take and a round trip to the server) and the heap per
// held mailbox, with every mailbox held at once. Run it with
// -benchtime=100000x for the figure at a relay's default MaxMailboxes.
func BenchmarkMailboxHold(b *testing.B) {
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		b.Fatal(err)
	}
	go srv.Start()
	defer func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}()
	if !srv.ReadyForConnections(10 * time.Second) {
		b.Fatal("NATS server not ready within 10s")
	}
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
	start := func(opts *server.Options) *server.Server {
		s, err := server.NewServer(opts)
		if err != nil {
			b.Fatal(err)
		}
		go s.Start()
		b.Cleanup(func() {
			s.Shutdown()
			s.WaitForShutdown()
		})
		if !s.ReadyForConnections(10 * time.Second) {
			b.Fatal("NATS server not ready within 10s")
		}
		return s
	}
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

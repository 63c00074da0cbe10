package main

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/quicpipe/quicpipe/fleet"
	"github.com/quicpipe/quicpipe/fleet/natsnode"
)

// TestRelayFleet runs two relay processes with -fleet against an embedded
// NATS node: both join (their liveness keys appear in the bucket), and one
// stopped with Ctrl-C leaves (its key goes) and exits 0.
func TestRelayFleet(t *testing.T) {
	binary(t)
	node, err := natsnode.Start(natsnode.Config{Name: "n", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Close)
	url := node.ClientURL()
	a, _, _ := startRelayProc(t, "relay-a", t.TempDir(), "127.0.0.1:0", "-fleet", url, "-fleet-member", "a")
	startRelayProc(t, "relay-b", t.TempDir(), "127.0.0.1:0", "-fleet", url, "-fleet-member", "b")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	kv := fleetBucket(t, ctx, url)
	present := func(member string) bool {
		_, err := kv.Get(ctx, "m."+member)
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	for !present("a") || !present("b") {
		if ctx.Err() != nil {
			t.Fatal("the relays' liveness keys did not appear")
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.interrupt(t)
	a.expectExit(t, 20*time.Second, 0)
	if present("a") {
		t.Fatal("relay a left its liveness key behind after Ctrl-C")
	}
	if !present("b") {
		t.Fatal("relay b's liveness key went")
	}
}

// TestRelayFleetNode runs a relay with an embedded NATS node (-fleet-node)
// and a second relay that joins through it.
func TestRelayFleetNode(t *testing.T) {
	binary(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nodeAddr := l.Addr().String()
	l.Close()
	startRelayProc(t, "relay-a", t.TempDir(), "127.0.0.1:0", "-fleet-node", t.TempDir(), "-fleet-node-listen", nodeAddr, "-fleet-member", "a")
	url := "nats://" + nodeAddr
	startRelayProc(t, "relay-b", t.TempDir(), "127.0.0.1:0", "-fleet", url, "-fleet-member", "b")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	kv := fleetBucket(t, ctx, url)
	for _, m := range []string{"a", "b"} {
		if _, err := kv.Get(ctx, "m."+m); err != nil {
			t.Fatalf("liveness key of %s: %v", m, err)
		}
	}
}

// fleetBucket opens the fleet's bucket on the NATS server at url, as an
// operator's tool would.
func fleetBucket(t *testing.T, ctx context.Context, url string) jetstream.KeyValue {
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
	kv, err := js.KeyValue(ctx, fleet.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

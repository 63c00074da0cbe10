package natsnode

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestNode starts a lone node and uses its JetStream.
func TestNode(t *testing.T) {
	n, err := Start(Config{Name: "n", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.ClusterAddr() != nil {
		t.Fatalf("a lone node has a cluster address %v", n.ClusterAddr())
	}
	nc, err := nats.Connect(n.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
}

// TestNodeConfig refuses incomplete or bad configurations.
func TestNodeConfig(t *testing.T) {
	for _, c := range []Config{
		{StoreDir: t.TempDir()},
		{Name: "n"},
		{Name: "n", StoreDir: t.TempDir(), Listen: "nowhere"},
		{Name: "n", StoreDir: t.TempDir(), Listen: "127.0.0.1:99999"},
		{Name: "n", StoreDir: t.TempDir(), ClusterListen: "127.0.0.1"},
	} {
		if n, err := Start(c); err == nil {
			n.Close()
			t.Errorf("Start(%+v) succeeded", c)
		}
	}
}

// Command natsd runs one NATS node with JetStream (package fleet/natsnode)
// as a process of its own, for the fleet lab's tests: a node can then be
// stopped and restarted while the relays that use it live on. It prints
// "natsd ready <client URL>" on standard output once it accepts clients,
// and stops on SIGINT or SIGTERM. It is not a product: deploy nats-server,
// or the relay's -fleet-node, instead.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/quicpipe/quicpipe/fleet/natsnode"
)

func main() {
	name := flag.String("name", "", "node `name`, unique in the cluster (required)")
	store := flag.String("store", "", "JetStream storage `directory` (required)")
	listen := flag.String("listen", "127.0.0.1:4222", "client `address`")
	cluster := flag.String("cluster", "", "cluster `address` the other nodes route to (empty: run alone)")
	routes := flag.String("routes", "", "the other nodes' cluster `addresses`, comma-separated")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "natsd: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	var rs []string
	if *routes != "" {
		rs = strings.Split(*routes, ",")
	}
	// Catch the signals before the node starts, so that a stop asked
	// during its start is not lost.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	node, err := natsnode.Start(natsnode.Config{Name: *name, StoreDir: *store, Listen: *listen,
		ClusterListen: *cluster, Routes: rs})
	if err != nil {
		fmt.Fprintf(os.Stderr, "natsd: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("natsd ready %s\n", node.ClientURL())
	<-sig
	node.Close()
}

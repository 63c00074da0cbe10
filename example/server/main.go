// Command server runs a Quicpipe relay: the rendezvous through which the
// dialer and accepter examples reach each other. The relay forwards their
// packets by destination connection ID without decrypting them.
//
// Run it with
//
//	go run ./example/server
//
// It listens on UDP 127.0.0.1:4433 unless QUICPIPE_LISTEN names another
// address (":4433" for every interface, "127.0.0.1:0" for any free port), and
// prints "listening on <address>" as the first line of its standard output.
// Logs go to standard error. Ctrl-C stops it.
//
// The relay's identity is the public demo key of example/internal/demo, which
// provides no security: a real relay uses a key made by
// quicpipe.GenerateIdentity and gives its public half to the peers.
//
// QUICPIPE_XDP_IFACE asks for the XDP fast path on a network interface. This
// build does not have it yet: the server says so and serves on the userspace
// path.
package main

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/example/internal/demo"
)

const defaultListen = "127.0.0.1:4433"

func main() {
	log.SetFlags(0)
	log.SetPrefix("server: ")
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	listen := os.Getenv("QUICPIPE_LISTEN")
	if listen == "" {
		listen = defaultListen
	}
	if iface := os.Getenv("QUICPIPE_XDP_IFACE"); iface != "" {
		fmt.Fprintf(os.Stderr, "server: XDP is not available in this build yet; "+
			"ignoring QUICPIPE_XDP_IFACE=%s and serving on the userspace path\n", iface)
	}

	relay, err := quicpipe.ListenRelay(listen, &quicpipe.RelayConfig{
		Identity: demo.RelayKey,
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		return err
	}
	// The first line of standard output tells scripts and tests where to go.
	fmt.Printf("listening on %s\n", relay.Addr())

	// Serve returns nil once ctx is done, that is on Ctrl-C or SIGTERM.
	return relay.Serve(ctx)
}

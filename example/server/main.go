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
// QUICPIPE_XDP_IFACE asks for the XDP fast path on a network interface (for
// example "lo"): the server attaches its eBPF program there and says so, with
// the mode (native or generic). Without Linux, root or that interface it says
// why and serves on the userspace path.
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
	"github.com/quicpipe/quicpipe/relayxdp"
	"github.com/quicpipe/quicpipe/xdp"
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
	cfg := &quicpipe.RelayConfig{
		Identity: demo.RelayKey,
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, nil)),
	}
	iface := os.Getenv("QUICPIPE_XDP_IFACE")
	if iface != "" {
		cfg.FastPath = relayxdp.New(relayxdp.Config{Interface: iface})
	}
	relay, err := quicpipe.ListenRelay(listen, cfg)
	if err != nil && iface != "" {
		// XDP needs Linux, root (CAP_BPF and CAP_NET_ADMIN) and the
		// interface: without them, say why and serve in userspace.
		fmt.Fprintf(os.Stderr, "server: XDP unavailable on %s (%v); serving on the userspace path\n", iface, err)
		cfg.FastPath = nil
		relay, err = quicpipe.ListenRelay(listen, cfg)
	}
	if err != nil {
		return err
	}
	if prog, ok := relay.FastPath().(*xdp.Program); ok {
		fmt.Fprintf(os.Stderr, "server: XDP active on %s (%s mode)\n", iface, prog.Mode())
	}
	// The first line of standard output tells scripts and tests where to go.
	fmt.Printf("listening on %s\n", relay.LocalAddr())

	// Serve until Ctrl-C or SIGTERM, then report what was forwarded where.
	served := make(chan error, 1)
	go func() { served <- relay.Serve(context.Background()) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	st := relay.Stats()
	xdpFwd := st.XDP["forwarded_ipv4"].Packets + st.XDP["forwarded_ipv6"].Packets
	fmt.Fprintf(os.Stderr, "server: forwarded %d packets in userspace, %d in XDP\n", st.Forwarded, xdpFwd)
	relay.Close()
	return <-served
}

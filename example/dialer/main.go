// Command dialer opens a Quicpipe connection to the accepter example through
// a relay and sends it "hello" once a second.
//
// Start the relay (go run ./example/server), then run
//
//	QHOST=127.0.0.1:4433 go run ./example/dialer > packet.json
//
// QHOST, the relay's UDP address, is required. The dialer prints its first
// flight, the packets that open the connection, as one JSON line on standard
// output; everything else goes to standard error. Hand that line to the
// accepter by any means:
//
//	QHOST=127.0.0.1:4433 go run ./example/accepter < packet.json
//
// The dialer waits for the accepter as long as it takes, then sends "hello"
// on one stream every second until the connection ends or Ctrl-C.
//
// The keys are the public demo keys of example/internal/demo, which provide
// no security: a real dialer uses a key made by quicpipe.GenerateIdentity and
// pins the public keys of the relay and of the accepter it dials.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/example/internal/demo"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("dialer: ")
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	relay, err := demo.RelayAddr()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))

	cfg := &quicpipe.Config{
		RelayAddr: relay,
		RelayKey:  demo.Public(demo.RelayKey),
		Identity:  demo.DialerKey,
		// The examples show the relay path (and XDP on the server);
		// QUICPIPE_DIRECT=1 lets the peers move to a direct path.
		DisableDirect: os.Getenv("QUICPIPE_DIRECT") == "",
		Logger:        logger,
	}
	deliver := func(_ context.Context, flight *quicpipe.FirstFlight) error {
		line, err := flight.MarshalJSON()
		if err != nil {
			return err
		}
		// os.Stdout is unbuffered: the line is out as soon as it is written.
		if _, err := fmt.Fprintf(os.Stdout, "%s\n", line); err != nil {
			return err
		}
		logger.Info("first flight written to stdout; give it to the accepter's stdin")
		return nil
	}
	// ctx has no deadline: the dialer waits for the accepter until Ctrl-C.
	conn, err := quicpipe.Dial(ctx, cfg, demo.Public(demo.AccepterKey), deliver)
	if err != nil {
		if ctx.Err() != nil {
			logger.Info("interrupted before the accepter answered")
			return nil
		}
		return err
	}
	defer conn.CloseWithError(0, "")
	logger.Info("connected to accepter")

	stream, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return ended(ctx, logger, err)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if _, err := io.WriteString(stream, "hello\n"); err != nil {
			return ended(ctx, logger, err)
		}
		logger.Info("sent hello")
		select {
		case <-ctx.Done():
			stream.Close()
			return nil
		case <-conn.Context().Done():
			return ended(ctx, logger, context.Cause(conn.Context()))
		case <-tick.C:
		}
	}
}

// ended turns the error that ended the connection into the program's result:
// nil for Ctrl-C and for the accepter closing the connection normally.
func ended(ctx context.Context, logger *slog.Logger, err error) error {
	var appErr *quic.ApplicationError
	switch {
	case ctx.Err() != nil:
		return nil
	case errors.As(err, &appErr) && appErr.Remote && appErr.ErrorCode == 0:
		logger.Info("accepter closed the connection")
		return nil
	}
	return fmt.Errorf("connection to accepter: %w", err)
}

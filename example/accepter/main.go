// Command accepter accepts the connection of the dialer example through a
// relay and prints every line the dialer sends.
//
// Start the relay (go run ./example/server) and the dialer, then feed the
// dialer's first flight, the JSON line it printed, to the accepter:
//
//	QHOST=127.0.0.1:4433 go run ./example/accepter < packet.json
//
// QHOST, the relay's UDP address, is required. The accepter reads one line
// from standard input (a file, a pipe or a paste), completes the handshake
// through the relay within 30 seconds, accepts one stream and copies its
// lines to standard output. Logs go to standard error. It exits when the
// dialer ends the stream or the connection, or on Ctrl-C.
//
// The keys are the public demo keys of example/internal/demo, which provide
// no security: a real accepter uses a key made by quicpipe.GenerateIdentity
// and trusts only the public keys of its own dialers.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/example/internal/demo"
)

const (
	maxLine          = 64 << 10 // longest first flight line read from stdin
	handshakeTimeout = 30 * time.Second
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("accepter: ")
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

	flight, err := readFlight(os.Stdin)
	if err != nil {
		return err
	}
	a, err := quicpipe.NewAccepter(ctx, &quicpipe.Config{
		RelayAddr:    relay,
		RelayKey:     demo.Public(demo.RelayKey),
		Identity:     demo.AccepterKey,
		TrustedPeers: []ed25519.PublicKey{demo.Public(demo.DialerKey)},
		// The examples show the relay path (and XDP on the server);
		// QUICPIPE_DIRECT=1 lets the peers move to a direct path.
		DisableDirect: os.Getenv("QUICPIPE_DIRECT") == "",
		Logger:        logger,
	})
	if err != nil {
		return err
	}
	defer a.Close()

	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	conn, err := a.Accept(hctx, flight)
	cancel()
	var netErr net.Error
	switch {
	case err == nil:
	case ctx.Err() != nil:
		logger.Info("interrupted before the handshake completed")
		return nil
	case errors.As(err, &netErr) && netErr.Timeout():
		return fmt.Errorf("the dialer did not answer: is it still running, "+
			"and is this the flight it printed last? (%w)", err)
	default:
		return err
	}
	logger.Info("connected to dialer")
	// Close the connection normally on return, and on Ctrl-C at once, which
	// ends the reads below.
	defer conn.CloseWithError(0, "")
	context.AfterFunc(ctx, func() { conn.CloseWithError(0, "") })

	stream, err := conn.AcceptStream(ctx)
	if err != nil {
		return ended(ctx, logger, err)
	}
	r := bufio.NewReader(stream)
	for {
		// Copy each line as received; a line longer than r's buffer is
		// copied in pieces. os.Stdout is unbuffered: nothing waits.
		line, err := r.ReadSlice('\n')
		if _, werr := os.Stdout.Write(line); werr != nil {
			return werr
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return ended(ctx, logger, err)
		}
	}
}

// readFlight reads the dialer's first flight: one line, in JSON form.
func readFlight(stdin io.Reader) (*quicpipe.FirstFlight, error) {
	line, err := bufio.NewReaderSize(stdin, maxLine).ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, fmt.Errorf("the first line of stdin is longer than %d bytes: "+
			"not a first flight", maxLine)
	case err != nil && !errors.Is(err, io.EOF):
		return nil, fmt.Errorf("reading the first flight from stdin: %w", err)
	case len(bytes.TrimSpace(line)) == 0:
		return nil, errors.New("stdin is empty: give the accepter the JSON line the dialer printed")
	}
	flight, err := quicpipe.ParseFirstFlight(line)
	if err != nil {
		return nil, fmt.Errorf("stdin does not hold the dialer's first flight: %w", err)
	}
	return flight, nil
}

// ended turns the error that ended the stream into the program's result:
// nil for Ctrl-C and for the dialer ending the stream or the connection
// normally.
func ended(ctx context.Context, logger *slog.Logger, err error) error {
	var appErr *quic.ApplicationError
	switch {
	case ctx.Err() != nil:
		return nil
	case errors.Is(err, io.EOF):
		logger.Info("dialer ended the stream")
		return nil
	case errors.As(err, &appErr) && appErr.Remote && appErr.ErrorCode == 0:
		logger.Info("dialer closed the connection")
		return nil
	}
	return fmt.Errorf("connection to dialer: %w", err)
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// The command's use of a peer connection (docs/PROTOCOL.md, "The quicpipe
// command"): the dialer opens one bidirectional stream per pipe (one in the
// stdin/stdout mode, one per TCP connection in the TCP modes) and starts it
// with streamHeader, so that the listener learns of the stream at once even
// if the dialer has nothing to send yet (QUIC announces a stream with its
// first frame). Everything after the header is the piped bytes; the end of
// input is the stream's FIN.
var streamHeader = [4]byte{'Q', 'P', 'S', 1}

// Application error codes of streams and connections.
const (
	codeOK          = 0 // normal close, also after Ctrl-C
	codeError       = 1 // a local I/O error ended the pipe
	codeUnreachable = 2 // the listener could not reach its TCP target
	codeBadStream   = 3 // the stream did not start with streamHeader
)

// listenerWait bounds how long a listener that has finished both directions
// waits for the dialer to close the connection.
const listenerWait = 5 * time.Second

// readHeader reads and checks the stream header.
func readHeader(s *quic.Stream) error {
	var h [len(streamHeader)]byte
	s.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := io.ReadFull(s, h[:])
	s.SetReadDeadline(time.Time{})
	if err != nil {
		return fmt.Errorf("reading the stream header: %w", err)
	}
	if h != streamHeader {
		s.CancelRead(codeBadStream)
		s.CancelWrite(codeBadStream)
		return fmt.Errorf("the stream does not start with the quicpipe header (got % x)", h)
	}
	return nil
}

// cleanEnd reports whether err is the peer closing the connection normally
// (application error 0): the other side ended the session, which is not an
// error here.
func cleanEnd(err error) bool {
	var appErr *quic.ApplicationError
	return errors.As(err, &appErr) && appErr.Remote && appErr.ErrorCode == codeOK
}

// pipeStdio copies in to the stream and the stream to out until both
// directions have ended, the peer closes the connection, or ctx is done.
//
// No data may be lost when the connection closes: closing it discards what
// the other side has not received yet. So the dialer closes the connection,
// and only once it has read the listener's FIN; the listener sends its FIN
// only once it has read the dialer's. Hence when the dialer closes, both
// sides have received everything. A listener that has finished waits for
// that close (listenerWait at most). Ctrl-C closes the connection at once
// with code 0, which the other side takes as the end of the session.
func pipeStdio(ctx context.Context, qc *quic.Conn, s *quic.Stream, in io.Reader, out io.Writer, listener bool, prog *progress) error {
	recvFIN := make(chan struct{})
	recvc := make(chan error, 1)
	sendc := make(chan error, 1)
	go func() {
		_, err := io.Copy(out, prog.reader(s, &prog.received))
		if err == nil {
			close(recvFIN)
		}
		recvc <- err
	}()
	go func() {
		_, err := io.Copy(s, prog.reader(in, &prog.sent))
		if err != nil {
			sendc <- err
			return
		}
		if listener {
			select {
			case <-recvFIN:
			case <-qc.Context().Done():
				sendc <- context.Cause(qc.Context())
				return
			}
		}
		sendc <- s.Close()
	}()
	sent, received := false, false
	for !sent || !received {
		var err error
		select {
		case err = <-sendc:
			sent = true
		case err = <-recvc:
			received = true
		case <-ctx.Done():
			qc.CloseWithError(codeOK, "interrupted")
			return nil
		}
		if err != nil {
			if cleanEnd(err) || ctx.Err() != nil {
				return nil
			}
			qc.CloseWithError(codeError, "")
			return err
		}
	}
	if listener {
		t := time.NewTimer(listenerWait)
		select {
		case <-qc.Context().Done():
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	qc.CloseWithError(codeOK, "")
	return nil
}

// forwardTCP pipes a TCP connection and a stream both ways, mapping each
// side's end of input to the other's half-close, until both directions have
// ended. An error on either side aborts both.
func forwardTCP(tc *net.TCPConn, s *quic.Stream) error {
	var once sync.Once
	var first error
	abort := func(err error) {
		once.Do(func() {
			first = err
			s.CancelRead(codeError)
			s.CancelWrite(codeError)
			tc.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := io.Copy(s, tc); err != nil {
			abort(err)
			return
		}
		s.Close()
	})
	wg.Go(func() {
		if _, err := io.Copy(tc, s); err != nil {
			abort(err)
			return
		}
		tc.CloseWrite()
	})
	wg.Wait()
	tc.Close()
	return first
}

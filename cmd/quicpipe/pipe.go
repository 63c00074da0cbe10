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
// first frame). In the stdin/stdout mode, the listener answers with the same
// header when it takes the session, and only then does the dialer report
// that it connected. Everything after the headers is the piped bytes; the
// end of input is the stream's FIN. Version 2 added the listener's answer:
// a version-1 peer is refused with codeBadStream rather than handed 4 stray
// bytes.
var streamHeader = [4]byte{'Q', 'P', 'S', 2}

// Application error codes of streams and connections.
const (
	codeOK          = 0 // the session ended in order (both FINs read), or the TCP modes were stopped
	codeError       = 1 // a local I/O error ended the pipe
	codeUnreachable = 2 // the listener could not reach its TCP target
	codeBadStream   = 3 // the stream did not start with streamHeader
	codeInterrupted = 4 // a signal (Ctrl-C, SIGTERM) stopped a stdin/stdout session before its end
	codeBusy        = 5 // the listener already serves another dialer
)

// The peer connections of the command notice a vanished peer within
// seconds: quic-go sends a PING when nothing arrived for peerKeepAlive and
// closes after peerIdleTimeout without any packet. The idle timeout must
// outlast a direct path's fallback to the relay (about 3.5 s without an
// answer, then a round trip through the relay), or a pipe would die
// whenever a direct path does. The library's defaults (90 s) are for
// connections that must survive a relay restart; an interactive pipe would
// rather say that the other side is gone.
const (
	peerKeepAlive   = time.Second
	peerIdleTimeout = 8 * time.Second
)

// peerQUICConfig is the QUIC configuration of the command's peer
// connections.
func peerQUICConfig() *quic.Config {
	return &quic.Config{KeepAlivePeriod: peerKeepAlive, MaxIdleTimeout: peerIdleTimeout}
}

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
// (application error 0).
func cleanEnd(err error) bool {
	var appErr *quic.ApplicationError
	return errors.As(err, &appErr) && appErr.Remote && appErr.ErrorCode == codeOK
}

// errBusy is what a dialer refused by a busy listener reports.
var errBusy = errors.New("the listener is already connected to another peer (it serves one session per ticket)")

// connError says why the connection or stream that failed with err ended,
// when the other side ended it or vanished; other errors are returned
// unchanged.
func connError(err error) error {
	var appErr *quic.ApplicationError
	var streamErr *quic.StreamError
	var idleErr *quic.IdleTimeoutError
	code, remote := quic.ApplicationErrorCode(0), false
	switch {
	case errors.As(err, &appErr):
		code, remote = appErr.ErrorCode, appErr.Remote
	case errors.As(err, &streamErr):
		code, remote = quic.ApplicationErrorCode(streamErr.ErrorCode), streamErr.Remote
	case errors.As(err, &idleErr):
		return fmt.Errorf("the other side stopped answering (nothing heard for %v): it was killed, or the network between us failed", peerIdleTimeout)
	}
	if !remote {
		return err
	}
	switch code {
	case codeOK:
		return errors.New("the other side closed the connection before the end of the data")
	case codeError:
		return errors.New("the other side stopped on an error")
	case codeUnreachable:
		return errors.New("the listener could not reach its TCP service")
	case codeBadStream:
		return errors.New("the other side does not speak this quicpipe protocol")
	case codeInterrupted:
		return errors.New("the other side was interrupted")
	case codeBusy:
		return errBusy
	}
	return err
}

// pipeStdio copies in to the stream and the stream to out until both
// directions have ended, the connection ends, or ctx is done.
//
// Only the FIN of each direction is an end: a connection that closes before
// both were read is an error, whatever its code. No data may be lost when
// the connection closes: closing it discards what the other side has not
// received yet. So the dialer closes the connection, and only once it has
// read the listener's FIN; the listener sends its FIN only once it has read
// the dialer's. Hence when the dialer closes, both sides have received
// everything. A listener that has finished waits for that close
// (listenerWait at most). A signal closes the connection at once with
// codeInterrupted, which the other side reports.
//
// When inTerminal is set (in is a terminal) and nothing was read from in
// by the time the other side's input has ended, this side's input ends too
// (decision 0017): a person receiving a file need not press Ctrl-D. What is
// typed after that is dropped.
func pipeStdio(ctx context.Context, qc *quic.Conn, s *quic.Stream, in io.Reader, out io.Writer, listener, inTerminal bool, prog *progress) error {
	recvFIN := make(chan struct{})
	recvc := make(chan error, 1)
	sendc := make(chan error, 1)
	go func() {
		_, err := io.Copy(prog.writer(out), prog.reader(s, &prog.received))
		if err == nil {
			close(recvFIN)
		}
		recvc <- err
	}()
	w := &inputWriter{s: s}
	inputc := make(chan error, 1)
	go func() {
		_, err := io.Copy(w, prog.reader(in, &prog.sent))
		inputc <- err
	}()
	var yielded chan struct{} // closed when this side's input ends for it
	if inTerminal {
		yielded = make(chan struct{})
		// The other side's input has ended at its FIN or, as the
		// listener holds its FIN back, at its inputEnded notice.
		otherEnded := recvFIN
		if !listener {
			otherEnded = make(chan struct{})
			go awaitInputEnded(qc, recvFIN, otherEnded)
		}
		go func() {
			select {
			case <-otherEnded:
			case <-qc.Context().Done():
				return
			}
			if w.end(func() bool { return prog.sent.Load() == 0 }) {
				close(yielded)
			}
		}()
	}
	go func() {
		var err error
		select {
		case err = <-inputc:
		case <-yielded:
		}
		if err != nil {
			sendc <- err
			return
		}
		if listener {
			select {
			case <-recvFIN:
			default:
				noticeInputEnded(qc)
			}
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
			qc.CloseWithError(codeInterrupted, "interrupted")
			return stopped(ctx)
		}
		if err != nil {
			if ctx.Err() != nil {
				qc.CloseWithError(codeInterrupted, "interrupted")
				return stopped(ctx)
			}
			// The connection's end explains a failed copy better than
			// the copy's own error.
			if cause := context.Cause(qc.Context()); cause != nil {
				err = cause
			}
			qc.CloseWithError(codeError, "")
			err = connError(err)
			return fmt.Errorf("%w (received %d bytes, sent %d)", err, prog.received.Load(), prog.sent.Load())
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

// inputEnded starts the unidirectional stream with which a listener whose
// input has ended before the dialer's tells the dialer so (its FIN waits
// for the dialer's): a dialer whose terminal has sent nothing then ends its
// own input (decision 0017). The stream carries these 4 bytes and its FIN.
// A dialer that does not know it leaves the stream unread.
var inputEnded = [4]byte{'Q', 'P', 'E', 2}

// noticeInputEnded sends the inputEnded notice, if the connection allows.
func noticeInputEnded(qc *quic.Conn) {
	us, err := qc.OpenUniStream()
	if err != nil {
		return // a notice the dialer may do without
	}
	us.Write(inputEnded[:])
	us.Close()
}

// awaitInputEnded closes ended when the listener's inputEnded notice
// arrives, or when its FIN does.
func awaitInputEnded(qc *quic.Conn, recvFIN <-chan struct{}, ended chan<- struct{}) {
	got := make(chan struct{})
	go func() {
		for {
			us, err := qc.AcceptUniStream(qc.Context())
			if err != nil {
				return
			}
			var b [len(inputEnded)]byte
			us.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.ReadFull(us, b[:])
			us.CancelRead(codeOK)
			if err == nil && b == inputEnded {
				close(got)
				return
			}
		}
	}()
	select {
	case <-got:
	case <-recvFIN:
	case <-qc.Context().Done():
		return
	}
	close(ended)
}

// errInputEnded is what writes to an inputWriter return once its input was
// ended for it.
var errInputEnded = errors.New("input ended")

// inputWriter writes the local input to the stream until end is called.
type inputWriter struct {
	s     *quic.Stream
	mu    sync.Mutex
	ended bool
}

func (w *inputWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended {
		return 0, errInputEnded
	}
	return w.s.Write(b)
}

// end ends the input if cond, checked while no write is in progress,
// holds, and reports whether it did. Later writes fail with errInputEnded.
// Once false, cond must stay false.
func (w *inputWriter) end(cond func() bool) bool {
	if !cond() {
		return false // without waiting for a write in progress
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !cond() {
		return false
	}
	w.ended = true
	return true
}

// forwardTCP pipes a TCP connection and a stream both ways, mapping each
// side's end of input to the other's half-close, until both directions have
// ended. An error on either side aborts both: the stream is reset, and the
// TCP connection too (RST, not FIN), so that neither end mistakes an abort
// for the end of the data; the listener resets with codeUnreachable a
// stream whose TCP service it could not reach.
func forwardTCP(tc *net.TCPConn, s *quic.Stream) error {
	var once sync.Once
	var first error
	abort := func(err error) {
		once.Do(func() {
			first = err
			s.CancelRead(codeError)
			s.CancelWrite(codeError)
			tc.SetLinger(0)
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

// targetDown reports whether err is the listener resetting a stream because
// it could not reach its TCP service.
func targetDown(err error) bool {
	var se *quic.StreamError
	return errors.As(err, &se) && se.Remote && se.ErrorCode == codeUnreachable
}

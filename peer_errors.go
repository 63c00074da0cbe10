package quicpipe

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/quic-go/quic-go"
)

// ErrRelayUnreachable is wrapped by the error of a peer whose relay did not
// complete a QUIC handshake in time: it is not running at that address, the
// address is wrong, or UDP to it is blocked. The error is a
// *RelayConnError, which names the address and the time waited.
var ErrRelayUnreachable = errors.New("quicpipe: relay unreachable")

// ErrRelayKeyMismatch is wrapped by the error of a peer whose relay
// presented a key other than the pinned Config.RelayKey: the key is wrong,
// or another relay (or an impostor) answers at that address. The error is a
// *RelayConnError, which names both keys.
var ErrRelayKeyMismatch = errors.New("quicpipe: relay key mismatch")

// RelayConnError is returned (wrapped) when a peer cannot establish its
// HTTP/3 connection to the relay: by NewDialer and NewAccepter, and by
// requests that have to reconnect. errors.Is reports ErrRelayUnreachable or
// ErrRelayKeyMismatch when the failure is one of those; Unwrap also returns
// quic-go's error.
type RelayConnError struct {
	// Addr is the relay's address as dialed.
	Addr string
	// Waited is how long the attempt lasted.
	Waited time.Duration
	// Pinned is the key the peer expected (Config.RelayKey); nil when
	// Config.RelayTLSConfig replaced it.
	Pinned ed25519.PublicKey
	// Presented is the key the relay presented when it did not match
	// Pinned, or nil if it presented no Ed25519 key or the key matched.
	Presented ed25519.PublicKey
	// Err is the error of the QUIC dial.
	Err error
	// Tunnel is the last error of the relay's tunnel, tried because UDP
	// got no answer (Config.Tunnel), or nil.
	Tunnel error

	reason error // ErrRelayUnreachable, ErrRelayKeyMismatch or nil
}

func (e *RelayConnError) Error() string {
	if e.Tunnel != nil {
		return fmt.Sprintf("%s; the tunnel failed too: %v", e.udpError(), e.Tunnel)
	}
	return e.udpError()
}

func (e *RelayConnError) udpError() string {
	switch {
	case e.reason == ErrRelayUnreachable:
		return fmt.Sprintf("quicpipe: relay %s unreachable: no answer within %v", e.Addr, e.Waited.Round(100*time.Millisecond))
	case e.reason == ErrRelayKeyMismatch && e.Presented != nil:
		return fmt.Sprintf("quicpipe: relay %s presented the key %s, not the pinned relay key %s", e.Addr, EncodeKey(e.Presented), EncodeKey(e.Pinned))
	case e.reason == ErrRelayKeyMismatch:
		return fmt.Sprintf("quicpipe: relay %s did not present the pinned relay key %s: %v", e.Addr, EncodeKey(e.Pinned), e.Err)
	}
	return fmt.Sprintf("quicpipe: connect to relay %s: %v", e.Addr, e.Err)
}

// Unwrap returns the reason (ErrRelayUnreachable, ErrRelayKeyMismatch),
// if any, and quic-go's error.
func (e *RelayConnError) Unwrap() []error {
	if e.reason == nil {
		return []error{e.Err}
	}
	return []error{e.reason, e.Err}
}

// relayConnError classifies the failure err of a dial to the relay at addr
// that lasted waited. ctx is the caller's context: a canceled dial is not
// an unreachable relay.
func relayConnError(ctx context.Context, addr string, pinned ed25519.PublicKey, waited time.Duration, err error) *RelayConnError {
	e := &RelayConnError{Addr: addr, Waited: waited, Pinned: pinned, Err: err}
	var hsTimeout *quic.HandshakeTimeoutError
	var idle *quic.IdleTimeoutError
	var verr *tls.CertificateVerificationError
	switch {
	case pinned != nil && errors.As(err, &verr):
		// The chain did not lead to the pinned key's anchor (see
		// trust.go): the relay's certificate carries another key.
		e.reason = ErrRelayKeyMismatch
		if len(verr.UnverifiedCertificates) > 0 {
			e.Presented, _ = verr.UnverifiedCertificates[0].PublicKey.(ed25519.PublicKey)
		}
	case pinned != nil && errors.Is(err, ErrUntrustedKey):
		e.reason = ErrRelayKeyMismatch
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		// The caller gave up: not the relay's fault.
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &hsTimeout), errors.As(err, &idle):
		e.reason = ErrRelayUnreachable
	}
	return e
}

// RelayError is returned (wrapped) when the relay refuses a request: it
// carries the relay's answer. errors.Is matches it against the sentinel
// error of its code, where there is one: ErrUnauthorized, ErrNoMailbox,
// ErrRelayLimit, ErrRelayClosing or ErrNotSupported.
type RelayError struct {
	// Status is the HTTP status of the answer.
	Status int
	// Code is the relay's machine-readable reason: one of the Code*
	// constants (a newer relay may send others).
	Code string
	// Message is the relay's human-readable message.
	Message string
	// RetryAfter is the wait the relay asked for before another attempt
	// (its Retry-After header, at most a minute), or zero.
	RetryAfter time.Duration
}

func (e *RelayError) Error() string {
	return fmt.Sprintf("quicpipe: relay refused the request: %d %s: %s", e.Status, e.Code, e.Message)
}

// Unwrap returns the sentinel error of the answer's code, or nil if the code
// has none (a malformed request: a bug, not a condition to handle).
func (e *RelayError) Unwrap() error {
	switch e.Code {
	case CodeUnauthorized:
		return ErrUnauthorized
	case CodeNoMailbox:
		return ErrNoMailbox
	case CodeLimitSource, CodeLimitSourceCIDs, CodeLimitDerive, CodeLimitTotal, CodeLimitCIDs,
		CodeRateLimited, CodeMailboxBusy, CodeLimitMailboxes:
		return ErrRelayLimit
	case CodeClosing:
		return ErrRelayClosing
	case CodeNotFound:
		return ErrNotSupported
	}
	return nil
}

// Sentinel errors of the relay's refusals that a caller can act on; a
// *RelayError with the matching code wraps each (see RelayError.Unwrap).
var (
	// ErrNoMailbox: nobody holds the mailbox dialed at the relay (the
	// accepter is not listening, or left before the flight reached it).
	ErrNoMailbox = errors.New("quicpipe: no mailbox open for that key at the relay")
	// ErrRelayLimit: the relay refused the request at one of its limits
	// (per source, in total, or a rate); a later attempt may succeed.
	ErrRelayLimit = errors.New("quicpipe: refused at a relay limit")
	// ErrRelayClosing: the relay is shutting down or draining.
	ErrRelayClosing = errors.New("quicpipe: relay closing")
	// ErrNotSupported: the relay does not serve the endpoint asked for (the
	// mailbox is off, or the relay is older).
	ErrNotSupported = errors.New("quicpipe: not supported by the relay")
)

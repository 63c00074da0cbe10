package quicpipe

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// The mailbox in a relay fleet: an accepter holds its mailbox at the member
// its HTTP/3 connection reaches, and a dialer may post to any member. A
// post for a mailbox the relay does not hold goes to its MailboxRouter,
// which hands the flight to the member that holds it; that member delivers
// it with DeliverMailbox. See docs/decisions/0024-mailbox-across-members.md.

// CodeMailboxUnreachable: the relay could not hand a post over to the fleet
// member that holds the mailbox (no answer in time, or no link to the
// other members) (503).
const CodeMailboxUnreachable = "mailbox_unreachable"

// MailboxRouter hands mailbox posts between the members of a relay fleet
// (RelayConfig.MailboxRouter; package fleet has one on NATS). The relay
// tells it which mailboxes it holds, and gives it the posts for the
// mailboxes it does not hold.
type MailboxRouter interface {
	// Hold tells that the relay holds key's mailbox for one accepter's
	// request, so that the other members hand the posts for key to it. The
	// relay calls it after taking the mailbox and before confirming it to
	// the accepter, outside its locks; it may block, within ctx, until the
	// fleet routes key to this relay. An error is logged and the mailbox
	// stays open for posts made at this relay.
	//
	// Every Hold is followed by exactly one Release of the same key once
	// that request ends, or, if the accepter fell asleep (decision 0029),
	// once its sleeping mailbox ends (it wakes into a reopened mailbox,
	// leaves, expires, is yielded, or the relay closes). The holds of one
	// key may overlap (a newer request took the mailbox over from an older
	// one): the relay holds key until as many Releases as Holds came.
	Hold(ctx context.Context, key ed25519.PublicKey) error
	// Release tells that one hold of key's mailbox ended. The relay calls
	// it outside its locks; it should not block for long.
	Release(key ed25519.PublicKey)
	// Post hands flight (a first flight in binary form, checked and within
	// the relay's MaxPostBytes) to the member that holds key's mailbox, and
	// returns once that member answered or ctx ended. It returns nil if
	// the flight was delivered; a *RelayError with the answer of the
	// holding member (a local post's answers: CodeNoMailbox when nobody in
	// the fleet holds the mailbox, CodeMailboxBusy, ...) that the relay
	// gives the dialer as it is; any other error if the flight could not be
	// handed over, which the relay answers with CodeMailboxUnreachable.
	Post(ctx context.Context, key ed25519.PublicKey, flight []byte) error
}

// DeliverMailbox delivers flight, a first flight in binary form that
// another member of the fleet received, to the mailbox of key if this
// relay holds it, as a post made at this relay would be, and returns once
// it is written to the accepter. It returns nil, or a *RelayError with the
// answer a post at this relay would get: CodeNoMailbox if the relay does
// not hold the mailbox (or is closing), CodeMailboxBusy if the flight was
// not taken within the relay's DeliveryTimeout or ctx, CodeBadFlight or
// CodeBodyTooLarge for a flight this relay would refuse, CodeNotFound if
// its mailbox is off. The posting member applies the per-source limits.
func (r *Relay) DeliverMailbox(ctx context.Context, key ed25519.PublicKey, flight []byte) error {
	m := r.mailbox
	if m == nil {
		return &RelayError{Status: http.StatusNotFound, Code: CodeNotFound, Message: "the mailbox is off at this relay"}
	}
	m.handedIn.Add(1)
	if len(key) != ed25519.PublicKeySize {
		return &RelayError{Status: http.StatusBadRequest, Code: CodeBadKey, Message: fmt.Sprintf("a mailbox key is %d bytes, not %d", ed25519.PublicKeySize, len(key))}
	}
	if int64(len(flight)) > m.cfg.MaxPostBytes {
		return &RelayError{Status: http.StatusRequestEntityTooLarge, Code: CodeBodyTooLarge,
			Message: fmt.Sprintf("post body exceeds %d bytes", m.cfg.MaxPostBytes)}
	}
	var f FirstFlight
	if err := f.UnmarshalBinary(flight); err != nil {
		return &RelayError{Status: http.StatusBadRequest, Code: CodeBadFlight, Message: err.Error()}
	}
	if m.isClosing() {
		return &RelayError{Status: http.StatusNotFound, Code: CodeNoMailbox, Message: "the relay member holding this mailbox is shutting down"}
	}
	m.mu.Lock()
	mb := m.boxes[string(key)]
	m.mu.Unlock()
	if mb == nil {
		return &RelayError{Status: http.StatusNotFound, Code: CodeNoMailbox, Message: "nobody holds this mailbox: the accepter is not listening at this relay"}
	}
	if re := m.deliver(ctx, mb, flight); re != nil {
		return re
	}
	return nil
}

// YieldMailbox ends this relay's hold of key's mailbox because another
// member of the fleet took it (the accepter opened it there since): the
// holding request is told, as an older holder is when a newer connection
// takes the mailbox at this relay, and ends; a sleeping holder is
// forgotten. It reports whether the relay held the mailbox. It does not
// block.
func (r *Relay) YieldMailbox(key ed25519.PublicKey) bool {
	m := r.mailbox
	if m == nil {
		return false
	}
	m.mu.Lock()
	mb := m.boxes[string(key)]
	if mb == nil {
		m.mu.Unlock()
		return false
	}
	close(mb.replaced)
	delete(m.boxes, string(key))
	m.releaseLocked(mb)
	unroute := false
	if mb.sleep != nil {
		ss := r.sleep
		ss.mu.Lock()
		ss.dropLocked(mb.sleep)
		ss.mu.Unlock()
		mb.end()
		unroute = m.unrouteLocked(mb)
	}
	m.mu.Unlock()
	if unroute {
		r.cfg.MailboxRouter.Release(key)
	}
	m.yielded.Add(1)
	return true
}

// handOver gives a post for a mailbox this relay does not hold to the
// MailboxRouter and answers with what the holding member answered.
func (m *mailboxServer) handOver(ctx context.Context, w http.ResponseWriter, rt MailboxRouter, key []byte, body []byte) {
	m.handedOut.Add(1)
	// The holder waits up to its DeliveryTimeout; the router bounds the
	// hand-over itself, this only stops it if the dialer goes.
	err := rt.Post(ctx, ed25519.PublicKey(key), body)
	if err == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if re, ok := errors.AsType[*RelayError](err); ok && re.Status >= 400 && re.Status <= 599 && re.Code != "" {
		m.fail(w, re.Status, re.Code, re.Message)
		return
	}
	m.handOverFailed.Add(1)
	m.r.log.Debug("mailbox: cannot hand a post over to the fleet", "err", err)
	m.fail(w, http.StatusServiceUnavailable, CodeMailboxUnreachable,
		"cannot reach the relay member holding this mailbox: "+err.Error())
}

// hold tells the MailboxRouter, if any, that this relay holds key's
// mailbox; it waits at most mailboxHoldTimeout.
func (m *mailboxServer) hold(ctx context.Context, key ed25519.PublicKey) {
	rt := m.r.cfg.MailboxRouter
	if rt == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, mailboxHoldTimeout)
	defer cancel()
	if err := rt.Hold(ctx, key); err != nil {
		m.holdFailed.Add(1)
		// At most one warning a second: opens come from anyone.
		now := time.Now().UnixNano()
		if last := m.holdWarned.Load(); now-last >= int64(time.Second) && m.holdWarned.CompareAndSwap(last, now) {
			m.r.log.Warn("mailbox: the fleet may not route posts to this relay's mailboxes; posts at this relay still reach them",
				"err", err, "failed_total", m.holdFailed.Load())
		}
	}
}

// mailboxHoldTimeout bounds how long an open waits for the MailboxRouter to
// route the mailbox to this relay.
const mailboxHoldTimeout = 2 * time.Second

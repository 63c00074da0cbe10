package fleet

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/quicpipe/quicpipe"
)

// The mailbox across members (see docs/decisions/0024-mailbox-across-members.md):
// a Member is its relay's quicpipe.MailboxRouter. While the relay holds the
// mailbox of key K, the member subscribes to the core NATS subject
// "<bucket>.mbox.<hex of K>". A post for K at a member that does not hold
// it is a NATS request on that subject: the holder's member delivers the
// flight to its relay (MailboxTable.DeliverMailbox) and replies with the
// relay's answer; no subscriber means nobody holds K ("no responders"). A
// member that starts holding K publishes a "take" on the subject, and a
// member that held K before lets it go (MailboxTable.YieldMailbox): the
// newest open wins, across members as at one relay.

// MailboxTable is what a Member delivers the mailbox posts of other members
// to; *quicpipe.Relay implements it. Start uses it if its Table implements
// it too.
type MailboxTable interface {
	DeliverMailbox(ctx context.Context, key ed25519.PublicKey, flight []byte) error
	YieldMailbox(key ed25519.PublicKey) bool
}

// Headers of the mailbox messages.
const (
	// hdrOp is the operation: opPost (a request: deliver the flight in the
	// body) or opTake (a publish: the sender now holds the mailbox).
	hdrOp = "Quicpipe-Op"
	// hdrMember is the sending member's id.
	hdrMember = "Quicpipe-Member"
	// hdrTimeout is how long, in milliseconds, the poster waits for the
	// answer of a post: the holder answers within it.
	hdrTimeout = "Quicpipe-Timeout-Ms"

	opPost = "post"
	opTake = "take"
)

// Bounds of the mailbox hand-over.
const (
	// maxHandoverBytes bounds the flight of a hand-over: a post body is at
	// most 65535 bytes (quicpipe.MailboxConfig.MaxPostBytes).
	maxHandoverBytes = 65535
	// maxHandoverWait bounds the time a holder spends on one hand-over,
	// whatever its poster asks.
	maxHandoverWait = 30 * time.Second
	// mailboxInbox is the capacity of the channel of incoming mailbox
	// messages; NATS drops what does not fit (the poster times out).
	mailboxInbox = 1024
	// maxReplyBytes bounds a reply the poster decodes.
	maxReplyBytes = 4096
)

// mailboxReply is the reply to a post: Status 204 once delivered, else the
// relay's error answer.
type mailboxReply struct {
	Status  int    `json:"status"`
	Code    string `json:"code,omitempty"`
	Message string `json:"error,omitempty"`
}

// mailboxHold is a key whose mailbox the relay holds: the subscription to
// its subject and the number of the relay's requests holding it.
type mailboxHold struct {
	sub *nats.Subscription // nil if subscribing failed
	n   int
}

// mailboxSubject is the subject of key's mailbox.
func (m *Member) mailboxSubject(key []byte) string {
	return m.mboxPrefix + hex.EncodeToString(key)
}

// Hold subscribes to the subject of key's mailbox (the relay holds it) and
// tells the other members, so that one that held it before lets it go. It
// returns once NATS has both, or with an error when ctx ends first or NATS
// is not reachable; the subscription stays and is renewed when NATS comes
// back. It implements quicpipe.MailboxRouter.
func (m *Member) Hold(ctx context.Context, key ed25519.PublicKey) error {
	m.hmu.Lock()
	closed := m.hclosed
	m.hmu.Unlock()
	if closed {
		return errors.New("fleet: member closed")
	}
	subj := m.mailboxSubject(key)
	// The take goes out before the subscription, so that it does not come
	// back to this member: NATS handles one connection's messages in order.
	take := nats.NewMsg(subj)
	take.Header.Set(hdrOp, opTake)
	take.Header.Set(hdrMember, m.id)
	terr := m.nc.PublishMsg(take)
	m.hmu.Lock()
	if m.hclosed {
		m.hmu.Unlock()
		return errors.New("fleet: member closed")
	}
	h := m.holds[string(key)]
	if h == nil {
		h = &mailboxHold{}
		m.holds[string(key)] = h
	}
	h.n++
	var err error
	if h.sub == nil {
		h.sub, err = m.nc.ChanSubscribe(subj, m.mboxIn)
	}
	m.hmu.Unlock()
	if err != nil {
		return fmt.Errorf("fleet: subscribing to the mailbox subject: %w", err)
	}
	if !m.nc.IsConnected() {
		return fmt.Errorf("fleet: not connected to NATS (%v): the mailbox is routed once it is back", m.nc.Status())
	}
	if terr != nil {
		return fmt.Errorf("fleet: announcing the mailbox: %w", terr)
	}
	if err := m.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("fleet: NATS did not confirm the mailbox's subscription: %w", err)
	}
	return nil
}

// Release drops one hold of key's mailbox, and its subscription with the
// last. It implements quicpipe.MailboxRouter and never blocks.
func (m *Member) Release(key ed25519.PublicKey) {
	m.hmu.Lock()
	defer m.hmu.Unlock()
	h := m.holds[string(key)]
	if h == nil {
		return
	}
	if h.n--; h.n > 0 {
		return
	}
	delete(m.holds, string(key))
	if h.sub != nil {
		h.sub.Unsubscribe()
	}
}

// releaseAll drops every subscription of a mailbox, when the member closes.
func (m *Member) releaseAll() {
	m.hmu.Lock()
	defer m.hmu.Unlock()
	m.hclosed = true
	for k, h := range m.holds {
		if h.sub != nil {
			h.sub.Unsubscribe()
		}
		delete(m.holds, k)
	}
}

// Post hands flight to the member that holds key's mailbox, over NATS, and
// returns its relay's answer: nil once delivered, a *quicpipe.RelayError
// (CodeNoMailbox if no member holds the mailbox, CodeMailboxBusy if
// Config.MaxHandovers are in progress here or there, ...), or another error
// if the hand-over failed (no answer within Config.HandoverTimeout, no
// connection to NATS). It implements quicpipe.MailboxRouter.
func (m *Member) Post(ctx context.Context, key ed25519.PublicKey, flight []byte) error {
	m.handoversOut.Add(1)
	if !m.nc.IsConnected() {
		m.handoverFailures.Add(1)
		return fmt.Errorf("fleet: not connected to NATS (%v)", m.nc.Status())
	}
	select {
	case m.outSem <- struct{}{}:
		defer func() { <-m.outSem }()
	default:
		m.handoversBusy.Add(1)
		return &quicpipe.RelayError{Status: http.StatusServiceUnavailable, Code: quicpipe.CodeMailboxBusy,
			Message: fmt.Sprintf("this relay member hands %d posts to other members already", m.cfg.MaxHandovers)}
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.HandoverTimeout)
	defer cancel()
	wait := m.cfg.HandoverTimeout
	if dl, ok := ctx.Deadline(); ok {
		wait = time.Until(dl)
	}
	// The holder answers a tenth early, so that its answer arrives in time.
	wait -= wait / 10
	if wait < time.Millisecond {
		m.handoverFailures.Add(1)
		return fmt.Errorf("fleet: no time left to hand the post over: %w", context.DeadlineExceeded)
	}
	msg := nats.NewMsg(m.mailboxSubject(key))
	msg.Header.Set(hdrOp, opPost)
	msg.Header.Set(hdrMember, m.id)
	msg.Header.Set(hdrTimeout, strconv.FormatInt(wait.Milliseconds(), 10))
	msg.Data = flight
	resp, err := m.nc.RequestMsgWithContext(ctx, msg)
	if errors.Is(err, nats.ErrNoResponders) {
		return &quicpipe.RelayError{Status: http.StatusNotFound, Code: quicpipe.CodeNoMailbox,
			Message: "nobody holds this mailbox: the accepter is not listening at any member of this relay fleet"}
	}
	if err != nil {
		m.handoverFailures.Add(1)
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("fleet: the member holding this mailbox did not answer within %v: %w", m.cfg.HandoverTimeout, err)
		}
		return fmt.Errorf("fleet: handing the post over: %w", err)
	}
	var r mailboxReply
	if len(resp.Data) > maxReplyBytes || json.Unmarshal(resp.Data, &r) != nil || r.Status < 200 || r.Status > 599 {
		m.handoverFailures.Add(1)
		return fmt.Errorf("fleet: malformed answer from the member holding this mailbox (%d bytes)", len(resp.Data))
	}
	if r.Status/100 == 2 {
		return nil
	}
	if r.Status < 400 || r.Code == "" {
		m.handoverFailures.Add(1)
		return fmt.Errorf("fleet: unexpected answer %d from the member holding this mailbox", r.Status)
	}
	return &quicpipe.RelayError{Status: r.Status, Code: r.Code, Message: r.Message}
}

// serveMailboxes takes the mailbox messages of the keys the relay holds
// until the member closes. t is nil if the relay does not deliver mailbox
// posts: posts are then answered CodeNotFound.
func (m *Member) serveMailboxes(t MailboxTable) {
	for {
		select {
		case <-m.ctx.Done():
			return
		case msg := <-m.mboxIn:
			m.mailboxMessage(t, msg)
		}
	}
}

// mailboxMessage handles one message on the subject of a held mailbox.
func (m *Member) mailboxMessage(t MailboxTable, msg *nats.Msg) {
	enc, ok := strings.CutPrefix(msg.Subject, m.mboxPrefix)
	key, err := hex.DecodeString(enc)
	if !ok || err != nil || len(key) != ed25519.PublicKeySize {
		m.mailboxMalformed.Add(1)
		return
	}
	from := msg.Header.Get(hdrMember)
	if from == m.id {
		// Its own take, or its own post: the relay looked in its own
		// mailboxes before posting.
		return
	}
	switch msg.Header.Get(hdrOp) {
	case opTake:
		if t != nil && t.YieldMailbox(key) {
			m.mailboxYields.Add(1)
			m.log.Debug("fleet: mailbox taken at another member", "by", from)
		}
	case opPost:
		if msg.Reply == "" {
			m.mailboxMalformed.Add(1)
			return
		}
		m.handoversIn.Add(1)
		if len(msg.Data) > maxHandoverBytes {
			m.reply(msg, mailboxReply{Status: http.StatusRequestEntityTooLarge, Code: quicpipe.CodeBodyTooLarge,
				Message: fmt.Sprintf("post body exceeds %d bytes", maxHandoverBytes)})
			return
		}
		if t == nil {
			m.reply(msg, mailboxReply{Status: http.StatusNotFound, Code: quicpipe.CodeNotFound,
				Message: "the relay member holding this mailbox does not deliver posts from other members"})
			return
		}
		select {
		case m.inSem <- struct{}{}:
		default:
			m.handoversBusy.Add(1)
			m.reply(msg, mailboxReply{Status: http.StatusServiceUnavailable, Code: quicpipe.CodeMailboxBusy,
				Message: fmt.Sprintf("the relay member holding this mailbox has %d posts of other members in progress", m.cfg.MaxHandovers)})
			return
		}
		wait := m.cfg.HandoverTimeout
		if ms, err := strconv.ParseInt(msg.Header.Get(hdrTimeout), 10, 64); err == nil && ms > 0 {
			wait = time.Duration(min(ms, maxHandoverWait.Milliseconds())) * time.Millisecond
		}
		m.wg.Go(func() {
			defer func() { <-m.inSem }()
			ctx, cancel := context.WithTimeout(m.ctx, wait)
			defer cancel()
			r := mailboxReply{Status: http.StatusNoContent}
			if err := t.DeliverMailbox(ctx, key, msg.Data); err != nil {
				if re, ok := errors.AsType[*quicpipe.RelayError](err); ok {
					r = mailboxReply{Status: re.Status, Code: re.Code, Message: re.Message}
				} else {
					r = mailboxReply{Status: http.StatusServiceUnavailable, Code: quicpipe.CodeMailboxUnreachable, Message: err.Error()}
				}
			}
			m.reply(msg, r)
		})
	default:
		m.mailboxMalformed.Add(1)
	}
}

// reply answers a post.
func (m *Member) reply(msg *nats.Msg, r mailboxReply) {
	if len(r.Message) > 512 {
		r.Message = r.Message[:512]
	}
	b, _ := json.Marshal(r)
	if err := msg.Respond(b); err != nil {
		m.log.Debug("fleet: cannot answer a mailbox post", "err", err)
	}
}

package quicpipe

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe/internal/forward"
)

// The mailbox delivers dialers' first flights through the relay. An accepter
// opens the mailbox named by its public key over its HTTP/3 connection to the
// relay (GET /v1/mailbox/<key>, signed with its private key) and keeps the
// request open; a dialer posts its first flight (POST /v1/mailbox/<key>) and
// the relay writes it at once into the open response. The relay stores
// nothing: a post to a mailbox nobody holds is refused, and a delivered
// flight is forgotten. docs/PROTOCOL.md specifies the API and
// docs/decisions/0005-mailbox.md explains the choices.

// mailboxPath is the prefix of the mailbox endpoints: mailboxPath followed by
// EncodeKey of the accepter's public key.
const mailboxPath = "/v1/mailbox/"

// mailboxSignatureHeader carries the accepter's signature when it opens its
// mailbox (unpadded URL-safe base64 of the 64-byte Ed25519 signature).
const mailboxSignatureHeader = "Quicpipe-Signature"

// mailboxContentType is the content type of a mailbox post (the binary form
// of a first flight) and of the open mailbox's stream of frames.
const mailboxContentType = "application/octet-stream"

const (
	// mailboxExporterLabel is the TLS exporter label (RFC 8446 section
	// 7.5) whose value, on the HTTP/3 connection carrying the open, the
	// accepter signs.
	mailboxExporterLabel = "EXPORTER-quicpipe-mailbox"
	// mailboxSignContext starts the signed message.
	mailboxSignContext = "quicpipe mailbox open v1\x00"
	// mailboxExporterLen is the length of the exporter value.
	mailboxExporterLen = 32
)

// Frame types on an open mailbox: type (1 byte) | length (2 bytes, big
// endian) | payload.
const (
	mailboxFrameFlight = 1 // payload: a first flight in binary form
	mailboxFrameClosed = 2 // payload: why the relay closed the mailbox (UTF-8)
)

// MailboxConfig configures a relay's mailbox. The zero value of each field
// selects the documented default.
type MailboxConfig struct {
	// MaxPostBytes bounds the body of a post. If zero, 16384 is used: a
	// first flight in binary form is at most 5 + 8×1502 bytes.
	MaxPostBytes int64
	// PostRate is how many posts per second one source may make over time,
	// and PostBurst how many it may make at once: a token bucket per source
	// IP address (per /64 prefix for IPv6). If zero, 5 per second and a
	// burst of 20 are used.
	PostRate  float64
	PostBurst int
	// MaxSources bounds the sources whose buckets are tracked; when all are
	// busy, posts from new sources are refused as rate-limited. If zero,
	// 65536 is used.
	MaxSources int
	// MaxMailboxes bounds the mailboxes open at once. If zero, 100000 is
	// used.
	MaxMailboxes int
	// MaxMailboxesPerSource bounds the mailboxes held at once by one
	// source: the IPv4 address, or the IPv6 /64 prefix, of the holder's
	// connection. If zero, 64 is used (as many as the registrations one
	// source may hold), so that 1563 sources are needed to take the default
	// MaxMailboxes.
	MaxMailboxesPerSource int
	// QueueLen is how many posts to one mailbox may wait for their turn to
	// be written; more are refused as busy. If zero, 8 is used.
	QueueLen int
	// DeliveryTimeout bounds how long a post waits for its flight to be
	// written to the accepter's open request. If zero, 5s is used.
	DeliveryTimeout time.Duration
}

func populateMailboxConfig(c *MailboxConfig) (*MailboxConfig, error) {
	cfg := *c
	if cfg.MaxPostBytes == 0 {
		cfg.MaxPostBytes = 16384
	}
	if cfg.PostRate == 0 {
		cfg.PostRate = 5
	}
	if cfg.PostBurst == 0 {
		cfg.PostBurst = 20
	}
	if cfg.MaxSources == 0 {
		cfg.MaxSources = 65536
	}
	if cfg.MaxMailboxes == 0 {
		cfg.MaxMailboxes = 100000
	}
	if cfg.MaxMailboxesPerSource == 0 {
		cfg.MaxMailboxesPerSource = 64
	}
	if cfg.QueueLen == 0 {
		cfg.QueueLen = 8
	}
	if cfg.DeliveryTimeout == 0 {
		cfg.DeliveryTimeout = 5 * time.Second
	}
	switch {
	case cfg.MaxPostBytes < 1 || cfg.MaxPostBytes > math.MaxUint16:
		return nil, fmt.Errorf("quicpipe: MailboxConfig.MaxPostBytes must be 1 to %d", math.MaxUint16)
	case cfg.PostRate < 0 || math.IsNaN(cfg.PostRate) || math.IsInf(cfg.PostRate, 0),
		cfg.PostBurst < 1, cfg.MaxSources < 1, cfg.MaxMailboxes < 1, cfg.MaxMailboxesPerSource < 1, cfg.QueueLen < 1,
		cfg.DeliveryTimeout < 0:
		return nil, errors.New("quicpipe: MailboxConfig limits must be positive")
	}
	return &cfg, nil
}

// mailboxRejectCodes are the codes of refused mailbox requests.
var mailboxRejectCodes = []string{
	CodeBadMethod, CodeUnauthorized, CodeBadKey, CodeBadSignature, CodeBadFlight, CodeBodyTooLarge,
	CodeNoMailbox, CodeRateLimited, CodeMailboxBusy, CodeLimitMailboxes, CodeClosing, CodeNoAddress,
	CodeLimitSource, CodeMailboxUnreachable,
}

// MailboxStats is a snapshot of a relay's mailbox counters.
type MailboxStats struct {
	// Open is the number of mailboxes held now.
	Open int
	// Opened counts successful opens (including takeovers).
	Opened uint64
	// Delivered and DeliveredBytes count first flights written to an
	// accepter (bytes of the binary form).
	Delivered, DeliveredBytes uint64
	// Rejected counts refused requests by the code of their error answer:
	// "bad_method", "unauthorized", "bad_key", "bad_signature", "bad_flight",
	// "body_too_large", "no_mailbox", "rate_limited", "mailbox_busy",
	// "limit_mailboxes", "closing", "no_address", "limit_source",
	// "mailbox_unreachable".
	Rejected map[string]uint64

	// In a relay fleet (RelayConfig.MailboxRouter): HandedOut counts the
	// posts for mailboxes this relay does not hold, given to the router,
	// and HandOverFailed those it could not hand over (answered
	// "mailbox_unreachable"); HandedIn counts the flights other members
	// handed to this relay (DeliverMailbox; those delivered count in
	// Delivered too); Yielded counts the mailboxes this relay let go
	// because the accepter opened its mailbox at another member
	// (YieldMailbox); HoldFailed counts the opens the router could not
	// route to this relay.
	HandedOut, HandOverFailed, HandedIn, Yielded, HoldFailed uint64
}

// MailboxStats returns a snapshot of the mailbox counters; all zero if the
// mailbox is off (RelayConfig.Mailbox is nil).
func (r *Relay) MailboxStats() MailboxStats {
	m := r.mailbox
	if m == nil {
		return MailboxStats{Rejected: make(map[string]uint64)}
	}
	s := MailboxStats{
		Opened:         m.opened.Load(),
		Delivered:      m.delivered.Load(),
		DeliveredBytes: m.deliveredBytes.Load(),
		Rejected:       m.rejected.snapshot(),
		HandedOut:      m.handedOut.Load(),
		HandOverFailed: m.handOverFailed.Load(),
		HandedIn:       m.handedIn.Load(),
		Yielded:        m.yielded.Load(),
		HoldFailed:     m.holdFailed.Load(),
	}
	m.mu.Lock()
	s.Open = len(m.boxes)
	m.mu.Unlock()
	return s
}

// mailboxServer serves the mailbox API of one relay.
type mailboxServer struct {
	r   *Relay
	cfg *MailboxConfig

	mu        sync.Mutex
	boxes     map[string]*mailbox // by public key
	perSource map[netip.Prefix]int

	limiter sourceLimiter

	opened, delivered, deliveredBytes atomic.Uint64
	rejected                          rejectCounters

	// The fleet's counters (see MailboxStats).
	handedOut, handOverFailed, handedIn, yielded, holdFailed atomic.Uint64
	holdWarned                                               atomic.Int64 // when HoldFailed was last logged (Unix ns)
}

// mailbox is one open mailbox: the request of the accepter holding it, or
// a sleeping accepter (relay_sleep.go).
type mailbox struct {
	key      string       // the public key
	src      netip.Prefix // the holder's source
	queue    chan *mailboxPost
	gone     chan struct{} // closed when the holder leaves for good (see end)
	replaced chan struct{} // closed when a newer holder takes over
	asleep   chan struct{} // closed when the holder goes to sleep
	endOnce  sync.Once

	// Guarded by mailboxServer.mu.
	conn  *quic.Conn // the holder's connection; nil while asleep
	sleep *sleeper   // non-nil while the holder sleeps
	// routed is true from the holder's MailboxRouter.Hold until its one
	// Release (unrouteLocked): by the request that opened the mailbox if
	// it ends awake, else once the sleeping mailbox ends.
	routed bool
}

// end closes mb.gone once: its holder left (its request ended while awake,
// or the sleeper was forgotten or replaced).
func (mb *mailbox) end() { mb.endOnce.Do(func() { close(mb.gone) }) }

type mailboxPost struct {
	frame   []byte
	done    chan error // buffered: the holder never waits on it
	claimed atomic.Bool
}

// claim takes p for whoever handles it: the holder that writes it, or the
// post that turns to a wake because the holder fell asleep first.
func (p *mailboxPost) claim() bool { return p.claimed.CompareAndSwap(false, true) }

func newMailboxServer(r *Relay, cfg *MailboxConfig) *mailboxServer {
	m := &mailboxServer{
		r:         r,
		cfg:       cfg,
		boxes:     make(map[string]*mailbox),
		perSource: make(map[netip.Prefix]int),
		rejected:  newRejectCounters(mailboxRejectCodes),
		limiter: sourceLimiter{
			rate:    cfg.PostRate,
			burst:   float64(cfg.PostBurst),
			max:     cfg.MaxSources,
			buckets: make(map[netip.Prefix]*forward.TokenBucket),
		},
	}
	return m
}

// fail writes a JSON error answer, the same shape as the registration API's,
// and counts it.
func (m *mailboxServer) fail(w http.ResponseWriter, status int, code, msg string) {
	m.rejected.fail(w, status, code, msg)
}

func (m *mailboxServer) handle(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		m.fail(w, http.StatusMethodNotAllowed, CodeBadMethod, "method "+req.Method+" not allowed")
		return
	}
	if a := m.r.cfg.Authorizer; a != nil {
		op := OpMailboxOpen
		if req.Method == http.MethodPost {
			op = OpMailboxPost
		}
		if err := a.Authorize(req, op); err != nil {
			m.fail(w, http.StatusUnauthorized, CodeUnauthorized, err.Error())
			return
		}
	}
	enc := strings.TrimPrefix(req.URL.Path, mailboxPath)
	key, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil || len(key) != ed25519.PublicKeySize {
		m.fail(w, http.StatusBadRequest, CodeBadKey,
			"the path must end with a 32-byte public key in unpadded URL-safe base64 (43 characters)")
		return
	}
	qc, _ := req.Context().Value(quicConnKey{}).(*quic.Conn)
	if qc == nil {
		m.fail(w, http.StatusInternalServerError, CodeNoAddress, "cannot tell the connection of this request")
		return
	}
	if req.Method == http.MethodGet {
		m.open(w, req, qc, ed25519.PublicKey(key))
	} else {
		m.post(w, req, qc, key)
	}
}

// mailboxMessage is what an accepter signs to open its mailbox: a fixed
// context string, its public key and the exporter value of the connection.
func mailboxMessage(key ed25519.PublicKey, ekm []byte) []byte {
	msg := make([]byte, 0, len(mailboxSignContext)+len(key)+len(ekm))
	msg = append(msg, mailboxSignContext...)
	msg = append(msg, key...)
	return append(msg, ekm...)
}

// mailboxExporter returns the exporter value an open on qc must sign.
func mailboxExporter(qc *quic.Conn, key ed25519.PublicKey) ([]byte, error) {
	cs := qc.ConnectionState().TLS
	return cs.ExportKeyingMaterial(mailboxExporterLabel, key, mailboxExporterLen)
}

// open serves GET: it checks the signature, takes the mailbox (replacing an
// older holder) and writes each posted flight into the response until the
// request or the relay ends.
func (m *mailboxServer) open(w http.ResponseWriter, req *http.Request, qc *quic.Conn, key ed25519.PublicKey) {
	if m.isClosing() {
		m.fail(w, http.StatusServiceUnavailable, CodeClosing, "relay is shutting down")
		return
	}
	sig, err := base64.RawURLEncoding.DecodeString(req.Header.Get(mailboxSignatureHeader))
	if err != nil || len(sig) != ed25519.SignatureSize {
		m.fail(w, http.StatusForbidden, CodeBadSignature,
			"opening a mailbox needs a "+mailboxSignatureHeader+" header: an Ed25519 signature in unpadded URL-safe base64")
		return
	}
	ekm, err := mailboxExporter(qc, key)
	if err != nil || !ed25519.Verify(key, mailboxMessage(key, ekm), sig) {
		m.fail(w, http.StatusForbidden, CodeBadSignature, "the signature does not prove possession of this key on this connection")
		return
	}
	ua, _ := qc.RemoteAddr().(*net.UDPAddr)
	if ua == nil {
		m.fail(w, http.StatusInternalServerError, CodeNoAddress, "cannot tell the address of this connection")
		return
	}
	mb := &mailbox{
		key:      string(key),
		src:      sourceOf(ua.AddrPort().Addr()),
		queue:    make(chan *mailboxPost, m.cfg.QueueLen),
		gone:     make(chan struct{}),
		replaced: make(chan struct{}),
		asleep:   make(chan struct{}),
		conn:     qc,
	}
	m.mu.Lock()
	old := m.boxes[string(key)]
	if old == nil && len(m.boxes) >= m.cfg.MaxMailboxes {
		m.mu.Unlock()
		m.fail(w, http.StatusServiceUnavailable, CodeLimitMailboxes,
			fmt.Sprintf("relay holds the maximum of %d mailboxes", m.cfg.MaxMailboxes))
		return
	}
	// Taking over a mailbox the same source holds adds none to its count.
	if (old == nil || old.src != mb.src) && m.perSource[mb.src] >= m.cfg.MaxMailboxesPerSource {
		m.mu.Unlock()
		m.fail(w, http.StatusTooManyRequests, CodeLimitSource,
			fmt.Sprintf("%s holds the maximum of %d mailboxes per source", mb.src, m.cfg.MaxMailboxesPerSource))
		return
	}
	unrouteOld := false
	if old != nil {
		close(old.replaced)
		m.releaseLocked(old)
		if old.sleep != nil {
			// The sleeper woke and opened its mailbox again.
			ss := m.r.sleep
			ss.mu.Lock()
			ss.dropLocked(old.sleep)
			ss.mu.Unlock()
			old.end()
			unrouteOld = m.unrouteLocked(old)
		}
	}
	m.boxes[string(key)] = mb
	m.perSource[mb.src]++
	m.mu.Unlock()
	rt := m.r.cfg.MailboxRouter
	m.opened.Add(1)
	// One deferred end, decided under one lock: a mailbox that fell asleep
	// stays, with its router hold, until the sleeper ends (forgetSleeping,
	// a reopen above, YieldMailbox).
	defer func() {
		m.mu.Lock()
		asleep := mb.sleep != nil
		if m.boxes[string(key)] == mb && !asleep {
			delete(m.boxes, string(key))
			m.releaseLocked(mb)
		}
		unroute := !asleep && m.unrouteLocked(mb)
		m.mu.Unlock()
		if unroute {
			rt.Release(key)
		}
		if !asleep {
			mb.end()
		}
	}()
	if rt != nil {
		m.hold(req.Context(), key)
		m.mu.Lock()
		mb.routed = true
		m.mu.Unlock()
	}
	if unrouteOld {
		// After the new hold, so that the fleet keeps routing the key to
		// this relay in between.
		rt.Release(key)
	}

	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", mailboxContentType)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	for {
		select {
		case p := <-mb.queue:
			if !p.claim() {
				continue // its post turned to a wake
			}
			rc.SetWriteDeadline(time.Now().Add(m.cfg.DeliveryTimeout))
			_, err := w.Write(p.frame)
			if err == nil {
				err = rc.Flush()
			}
			p.done <- err
			if err != nil {
				return
			}
			rc.SetWriteDeadline(time.Time{})
		case <-mb.replaced:
			// Tell the old holder, so that it does not take the mailbox
			// back (two accepters with one key would take turns forever).
			rc.SetWriteDeadline(time.Now().Add(time.Second))
			w.Write(mailboxFrame(mailboxFrameClosed, []byte("replaced: another connection opened this mailbox")))
			rc.Flush()
			return
		case <-mb.asleep:
			// The mailbox lives on without this request; posts still
			// queued turn to wakes (see deliver).
			return
		case <-req.Context().Done():
			return
		case <-m.r.closed:
			return
		}
	}
}

// unrouteLocked reports whether mb's MailboxRouter hold is to be released
// now, and marks it released: true exactly once per hold. m.mu must be
// held; the caller calls Release after unlocking.
func (m *mailboxServer) unrouteLocked(mb *mailbox) bool {
	if !mb.routed {
		return false
	}
	mb.routed = false
	return true
}

// releaseLocked takes mb, which has just left m.boxes, out of its source's
// count. m.mu must be held.
func (m *mailboxServer) releaseLocked(mb *mailbox) {
	if m.perSource[mb.src]--; m.perSource[mb.src] <= 0 {
		delete(m.perSource, mb.src)
	}
}

// post serves POST: it hands one first flight to the holder of the mailbox
// and answers 204 once it is written into the holder's request.
func (m *mailboxServer) post(w http.ResponseWriter, req *http.Request, qc *quic.Conn, key []byte) {
	if m.isClosing() {
		m.fail(w, http.StatusServiceUnavailable, CodeClosing, "relay is shutting down")
		return
	}
	ua, _ := qc.RemoteAddr().(*net.UDPAddr)
	if ua == nil {
		m.fail(w, http.StatusInternalServerError, CodeNoAddress, "cannot tell the address of this connection")
		return
	}
	if ok, wait := m.limiter.allow(ua.AddrPort().Addr(), time.Now()); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
		m.fail(w, http.StatusTooManyRequests, CodeRateLimited,
			fmt.Sprintf("too many posts from this address (%g per second, bursts of %d)", m.cfg.PostRate, m.cfg.PostBurst))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, m.cfg.MaxPostBytes))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			m.fail(w, http.StatusRequestEntityTooLarge, CodeBodyTooLarge,
				fmt.Sprintf("post body exceeds %d bytes", m.cfg.MaxPostBytes))
			return
		}
		m.fail(w, http.StatusBadRequest, CodeBadFlight, "reading the body: "+err.Error())
		return
	}
	var f FirstFlight
	if err := f.UnmarshalBinary(body); err != nil {
		m.fail(w, http.StatusBadRequest, CodeBadFlight, err.Error())
		return
	}
	m.mu.Lock()
	mb := m.boxes[string(key)]
	m.mu.Unlock()
	if mb == nil {
		if rt := m.r.cfg.MailboxRouter; rt != nil {
			m.handOver(req.Context(), w, rt, key, body)
			return
		}
		m.fail(w, http.StatusNotFound, CodeNoMailbox, "nobody holds this mailbox: the accepter is not listening at this relay")
		return
	}
	if re := m.deliver(req.Context(), mb, body); re != nil {
		m.fail(w, re.Status, re.Code, re.Message)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// deliver queues the first flight body (binary form) to mb and waits until
// the holder wrote it, mb ends, the relay's DeliveryTimeout passes or ctx
// ends; a sleeping holder gets it in wake datagrams. It returns nil once
// written (or acknowledged), else the answer a post gets.
func (m *mailboxServer) deliver(ctx context.Context, mb *mailbox, body []byte) *RelayError {
	deadline := time.Now().Add(m.cfg.DeliveryTimeout)
	t := time.NewTimer(m.cfg.DeliveryTimeout)
	defer t.Stop()
	late := &RelayError{Status: http.StatusServiceUnavailable, Code: CodeMailboxBusy, Message: "the accepter did not take the flight in time"}
	for {
		var p *mailboxPost
		m.mu.Lock()
		s := mb.sleep
		if s == nil {
			p = &mailboxPost{frame: mailboxFrame(mailboxFrameFlight, body), done: make(chan error, 1)}
			select {
			case mb.queue <- p:
			default:
				m.mu.Unlock()
				return &RelayError{Status: http.StatusServiceUnavailable, Code: CodeMailboxBusy, Message: "the mailbox has too many flights waiting"}
			}
		}
		m.mu.Unlock()
		if s != nil {
			err := m.r.sleep.wake(ctx, mb, s, body, deadline)
			if err == nil {
				m.delivered.Add(1)
				m.deliveredBytes.Add(uint64(len(body)))
				return nil
			}
			if re, ok := err.(*RelayError); ok {
				return re
			}
			if err != errWakeNoFlight {
				return &RelayError{Status: http.StatusBadRequest, Code: CodeBadFlight, Message: err.Error()}
			}
			// Woken without the flight: it goes to the listener's next
			// holder of the mailbox, once it has reconnected.
			select {
			case <-mb.replaced:
			case <-mb.gone:
			case <-t.C:
				return late
			case <-ctx.Done():
				return late
			}
			m.mu.Lock()
			next := m.boxes[mb.key]
			m.mu.Unlock()
			if next == nil || next == mb {
				return &RelayError{Status: http.StatusNotFound, Code: CodeNoMailbox, Message: "the accepter left before the flight was delivered"}
			}
			mb = next
			continue
		}
		var werr error
		select {
		case werr = <-p.done:
		case <-mb.asleep:
			if p.claim() {
				continue // the holder fell asleep before writing it: wake it
			}
			werr = <-p.done // being written
		case <-mb.gone:
			// The holder may have written it just before leaving.
			select {
			case werr = <-p.done:
			default:
				werr = errors.New("gone")
			}
		case <-t.C:
			return late
		case <-ctx.Done():
			return late
		}
		if werr != nil {
			return &RelayError{Status: http.StatusNotFound, Code: CodeNoMailbox, Message: "the accepter left before the flight was delivered"}
		}
		m.delivered.Add(1)
		m.deliveredBytes.Add(uint64(len(body)))
		return nil
	}
}

// isClosing reports whether the relay is closing or draining (Shutdown):
// Close sets r.closing too, before it closes r.closed.
func (m *mailboxServer) isClosing() bool {
	m.r.regMu.Lock()
	defer m.r.regMu.Unlock()
	return m.r.closing
}

// mailboxFrame encodes one frame of an open mailbox.
func mailboxFrame(typ byte, payload []byte) []byte {
	b := make([]byte, 0, 3+len(payload))
	b = append(b, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(payload)))
	return append(b, payload...)
}

// readMailboxFrame reads one frame of an open mailbox into buf.
func readMailboxFrame(r io.Reader, buf []byte) (typ byte, payload []byte, err error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[1:]))
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return hdr[0], buf, nil
}

// Package fleet makes relays a fleet: each member shares the registrations
// it holds with the others through a NATS JetStream key-value bucket, and
// forwards for the registrations of every member.
//
// A Member is the quicpipe.Replicator of one Relay. It writes a
// registration to the bucket when the relay creates, moves or removes it,
// never on a plain refresh; it watches the bucket and applies the other
// members' registrations to its Relay (quicpipe.Relay.ApplyRemote). Each
// member renews a liveness key; a member whose key is deleted or not
// renewed within Config.LivenessTTL is dead, and the others remove its
// registrations. See docs/decisions/0023-fleet-replication.md.
//
// A Member is also its relay's quicpipe.MailboxRouter: a dialer's post for
// a mailbox held at another member travels to it over a core NATS subject
// (see mailbox.go and docs/decisions/0024-mailbox-across-members.md).
package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/quicpipe/quicpipe"
)

// Config configures a Member. The zero value of each field selects the
// documented default.
type Config struct {
	// Conn is the connection to NATS, with JetStream enabled. The caller
	// keeps it: Close does not close it. If nil, the Member connects to
	// URL and closes that connection on Close.
	Conn *nats.Conn
	// URL is where NATS is when Conn is nil (for example
	// "nats://127.0.0.1:4222"; a comma-separated list of servers is
	// accepted). Required if Conn is nil.
	URL string
	// Bucket is the name of the key-value bucket all members share,
	// created if missing. If empty, "quicpipe-fleet" is used.
	Bucket string
	// Replicas is the number of copies of the bucket in a NATS cluster,
	// when the Member creates it. If zero, 1 is used.
	Replicas int
	// Member is this member's id, unique in the fleet: 1 to 64 letters,
	// digits, '-' or '_'. If empty, a random id is used.
	Member string
	// LivenessTTL is how long a member stays alive without renewing its
	// liveness key; a member renews its own every LivenessTTL/3. If zero,
	// 6s is used.
	LivenessTTL time.Duration
	// Timeout bounds each operation on NATS (connecting, creating the
	// bucket, a write). If zero, 5s is used.
	Timeout time.Duration
	// MarkerTTL is how long the bucket keeps the marker a removal leaves
	// (peers' keys are random, so markers of removed registrations would
	// otherwise pile up forever); at least 1s. A member that was away from
	// NATS longer than this misses the marker, but its next watch does not
	// replay the key, and it drops the registration then. Set when the
	// Member creates or updates the bucket. If zero, 15m is used.
	MarkerTTL time.Duration
	// HandoverTimeout bounds a mailbox post handed to another member (see
	// Member.Post), from the request until its answer. If zero, 6s is
	// used: a relay's default MailboxConfig.DeliveryTimeout (5s) and a
	// margin.
	HandoverTimeout time.Duration
	// MaxHandovers bounds the mailbox posts this member hands to others at
	// once, and separately those it takes from others at once; more are
	// answered "mailbox_busy". If zero, 256 is used.
	MaxHandovers int
	// Logger receives the Member's logs. If nil, it logs nothing.
	Logger *slog.Logger
}

// Default values of Config.
const (
	DefaultBucket      = "quicpipe-fleet"
	DefaultLivenessTTL = 6 * time.Second
	DefaultTimeout     = 5 * time.Second
	DefaultMarkerTTL   = 15 * time.Minute

	DefaultHandoverTimeout = 6 * time.Second
	DefaultMaxHandovers    = 256
)

// Table is what a Member applies the other members' registrations to;
// *quicpipe.Relay implements it.
type Table interface {
	ApplyRemote(rec quicpipe.FleetRecord) error
	RemoveRemote(key []byte, member string) bool
	RemoveMember(member string) int
	FleetRecord(key []byte) (quicpipe.FleetRecord, bool)
}

// Stats are a Member's counters.
type Stats struct {
	// Writes counts the registrations this member wrote to the bucket
	// (puts and deletes); Heartbeats the renewals of its liveness key;
	// WriteErrors the writes that failed (they are retried).
	Writes, Heartbeats, WriteErrors uint64
	// Applied counts the other members' registrations applied to the
	// relay; Removed the remote registrations removed from it (deleted
	// from the bucket, or held by a dead member).
	Applied, Removed uint64
	// Malformed counts entries in the fleet's layout that could not be
	// decoded, Foreign entries outside it, Refused records the relay
	// refused (quicpipe.ErrRemoteRecord, ErrRemoteFull): all ignored.
	Malformed, Foreign, Refused uint64
	// MembersGone counts members found dead.
	MembersGone uint64
	// Rewatches counts the times the member watched the bucket anew after
	// its watch stopped delivering (a NATS restart).
	Rewatches uint64
	// Pending is the number of changes waiting to be written.
	Pending int

	// MailboxesHeld is the number of mailboxes the relay holds that this
	// member routes posts to (one subscription each).
	MailboxesHeld int
	// HandoversOut counts the mailbox posts this member handed to others
	// (Post), HandoverFailures those that got no answer (NATS unreachable,
	// timeout, a malformed answer); HandoversIn counts the posts other
	// members handed to this one; HandoversBusy the posts refused at
	// MaxHandovers, either way.
	HandoversOut, HandoverFailures, HandoversIn, HandoversBusy uint64
	// MailboxYields counts the mailboxes the relay let go because the
	// accepter opened its mailbox at another member since; MailboxMalformed
	// the messages on a mailbox subject that were not understood (ignored).
	MailboxYields, MailboxMalformed uint64
}

// Member is one relay's membership of a fleet: the quicpipe.Replicator
// of its Relay (RelayConfig.Replicator) and the watcher that applies the
// other members' registrations to it. Create it with New, give it to the
// relay's config, then Start it with the relay.
type Member struct {
	cfg    Config
	id     string
	nc     *nats.Conn
	ownNC  bool
	kv     jetstream.KeyValue
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	stops  sync.WaitGroup // watches being stopped (stopWatch)

	// pending holds the changes to write, the latest per key: at most one
	// entry per registration the relay holds or just removed.
	pmu     sync.Mutex
	pending map[string]change
	wake    chan struct{} // capacity 1: the writer has work

	mu       sync.Mutex
	known    map[string]entryInfo // bucket key -> the last entry seen or written
	lastSeen map[string]time.Time // member -> when its liveness was last renewed (local clock)
	liveRev  map[string]uint64    // member -> revision of its liveness key
	// ownSeen is when this member last saw its own liveness renewed
	// through the watch: until it has lately, it cannot tell a dead member
	// from its own cut link to NATS, and declares no member dead.
	ownSeen time.Time
	// ownSeenRev is the revision of the member's own liveness key last seen
	// through the watch, beatRev and beatAt those of the last renewal
	// written: a renewal that does not come back means a lost watch.
	ownSeenRev, beatRev uint64
	beatAt              time.Time

	started   atomic.Bool
	closeOnce sync.Once

	writes, heartbeats, writeErrors   atomic.Uint64
	applied, removed                  atomic.Uint64
	malformed, foreign, refused, gone atomic.Uint64
	rewatches                         atomic.Uint64

	// The mailbox hand-over (mailbox.go).
	mboxPrefix                                                 string // "<bucket>.mbox."
	hmu                                                        sync.Mutex
	holds                                                      map[string]*mailboxHold // by public key; guarded by hmu
	hclosed                                                    bool                    // guarded by hmu
	mboxIn                                                     chan *nats.Msg
	inSem, outSem                                              chan struct{}
	handoversOut, handoverFailures, handoversIn, handoversBusy atomic.Uint64
	mailboxYields, mailboxMalformed                            atomic.Uint64
}

// change is a write waiting for the writer: a put of rec, or a delete.
type change struct {
	put bool
	rec quicpipe.FleetRecord
}

// entryInfo is what a Member remembers of a registration in the bucket.
type entryInfo struct {
	member string
	rev    uint64
}

// New connects to NATS (unless cfg.Conn is set), creates or opens the
// bucket and writes the member's liveness key. It fails, with an error
// that says what could not be reached, if NATS or JetStream does not answer
// within cfg.Timeout.
func New(ctx context.Context, cfg Config) (*Member, error) {
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.LivenessTTL == 0 {
		cfg.LivenessTTL = DefaultLivenessTTL
	}
	if cfg.LivenessTTL < 0 {
		return nil, fmt.Errorf("fleet: negative LivenessTTL %v", cfg.LivenessTTL)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MarkerTTL == 0 {
		cfg.MarkerTTL = DefaultMarkerTTL
	}
	if cfg.MarkerTTL < time.Second {
		return nil, fmt.Errorf("fleet: MarkerTTL %v is under 1s", cfg.MarkerTTL)
	}
	if cfg.HandoverTimeout == 0 {
		cfg.HandoverTimeout = DefaultHandoverTimeout
	}
	if cfg.MaxHandovers == 0 {
		cfg.MaxHandovers = DefaultMaxHandovers
	}
	if cfg.HandoverTimeout < 0 || cfg.MaxHandovers < 0 {
		return nil, errors.New("fleet: negative HandoverTimeout or MaxHandovers")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Member == "" {
		var b [8]byte
		rand.Read(b[:])
		cfg.Member = hex.EncodeToString(b[:])
	}
	if !validMember(cfg.Member) {
		return nil, fmt.Errorf("fleet: member id %q: want 1 to 64 letters, digits, '-' or '_'", cfg.Member)
	}
	m := &Member{
		cfg:      cfg,
		id:       cfg.Member,
		nc:       cfg.Conn,
		log:      cfg.Logger.With("member", cfg.Member),
		pending:  make(map[string]change),
		wake:     make(chan struct{}, 1),
		known:    make(map[string]entryInfo),
		lastSeen: make(map[string]time.Time),
		liveRev:  make(map[string]uint64),

		mboxPrefix: cfg.Bucket + ".mbox.",
		holds:      make(map[string]*mailboxHold),
		mboxIn:     make(chan *nats.Msg, mailboxInbox),
		inSem:      make(chan struct{}, cfg.MaxHandovers),
		outSem:     make(chan struct{}, cfg.MaxHandovers),
	}
	if m.nc == nil {
		if cfg.URL == "" {
			return nil, errors.New("fleet: neither Conn nor URL is set")
		}
		nc, err := nats.Connect(cfg.URL, nats.Timeout(cfg.Timeout), nats.Name("quicpipe relay "+cfg.Member),
			nats.MaxReconnects(-1))
		if err != nil {
			return nil, fmt.Errorf("fleet: cannot connect to NATS at %s: %w", cfg.URL, err)
		}
		m.nc, m.ownNC = nc, true
	}
	fail := func(err error) (*Member, error) {
		if m.ownNC {
			m.nc.Close()
		}
		return nil, err
	}
	js, err := jetstream.New(m.nc)
	if err != nil {
		return fail(fmt.Errorf("fleet: JetStream: %w", err))
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	m.kv, err = js.CreateOrUpdateKeyValue(cctx, jetstream.KeyValueConfig{
		Bucket:      cfg.Bucket,
		Description: "quicpipe relay fleet: registrations and members' liveness",
		History:     1,
		Replicas:    cfg.Replicas,
		// Removals leave markers that expire (Member.remove).
		LimitMarkerTTL: cfg.MarkerTTL,
	})
	if err != nil {
		return fail(fmt.Errorf("fleet: cannot open the key-value bucket %q on NATS %s (is JetStream enabled?): %w",
			cfg.Bucket, m.nc.ConnectedUrlRedacted(), err))
	}
	if _, err := m.kv.Put(cctx, memberKey(m.id), []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return fail(fmt.Errorf("fleet: cannot write the liveness key of member %s: %w", m.id, err))
	}
	return m, nil
}

// ID returns the member's id.
func (m *Member) ID() string { return m.id }

// Put queues rec, a registration the relay now holds, for the bucket. It
// implements quicpipe.Replicator and never blocks.
func (m *Member) Put(rec quicpipe.FleetRecord) { m.queue(change{put: true, rec: rec}) }

// Remove queues the deletion of key's registration from the bucket, if
// this member's write is still the one there. It implements
// quicpipe.Replicator and never blocks.
func (m *Member) Remove(key []byte) { m.queue(change{rec: quicpipe.FleetRecord{Key: key}}) }

func (m *Member) queue(c change) {
	m.pmu.Lock()
	m.pending[regKey(c.rec.Key)] = c
	m.pmu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Start watches the bucket, applying the other members' registrations to
// t (the Relay whose Replicator m is), renews m's liveness and writes the
// relay's changes, until Close. If t is a MailboxTable too (a Relay is),
// the member delivers to it the mailbox posts other members hand over. It returns once the registrations already
// in the bucket are applied, or with an error if the bucket cannot be
// watched or ctx ends first (Close the member then). Call Close only after
// Start returned.
func (m *Member) Start(ctx context.Context, t Table) error {
	if !m.started.CompareAndSwap(false, true) {
		return errors.New("fleet: Member started twice")
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	w, err := m.kv.WatchAll(m.ctx)
	if err != nil {
		m.cancel()
		return fmt.Errorf("fleet: cannot watch the bucket %q: %w", m.cfg.Bucket, err)
	}
	ready := make(chan struct{})
	m.wg.Go(func() { m.watch(w, t, ready) })
	m.wg.Go(func() { m.heartbeat() })
	m.wg.Go(m.writer)
	mt, _ := t.(MailboxTable)
	m.wg.Go(func() { m.serveMailboxes(mt) })
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("fleet: reading the bucket %q: %w", m.cfg.Bucket, ctx.Err())
	}
}

// Close stops the member and deletes its liveness key, so that the other
// members remove its registrations at once. Changes not yet written are
// dropped. It closes the NATS connection if New opened it.
func (m *Member) Close() error {
	var err error
	m.closeOnce.Do(func() {
		m.releaseAll()
		if m.cancel != nil {
			m.cancel()
		}
		m.wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.Timeout)
		defer cancel()
		if m.nc.IsConnected() {
			if e := m.remove(ctx, memberKey(m.id), 0); e != nil {
				err = fmt.Errorf("fleet: deleting the liveness key of member %s: %w", m.id, e)
			}
		}
		if m.ownNC {
			m.nc.Close()
		}
		m.stops.Wait()
	})
	return err
}

// Stats returns the member's counters.
func (m *Member) Stats() Stats {
	m.pmu.Lock()
	n := len(m.pending)
	m.pmu.Unlock()
	m.hmu.Lock()
	held := len(m.holds)
	m.hmu.Unlock()
	return Stats{
		Writes: m.writes.Load(), Heartbeats: m.heartbeats.Load(), WriteErrors: m.writeErrors.Load(),
		Applied: m.applied.Load(), Removed: m.removed.Load(),
		Malformed: m.malformed.Load(), Foreign: m.foreign.Load(), Refused: m.refused.Load(),
		MembersGone: m.gone.Load(), Rewatches: m.rewatches.Load(), Pending: n,
		MailboxesHeld: held,
		HandoversOut:  m.handoversOut.Load(), HandoverFailures: m.handoverFailures.Load(),
		HandoversIn: m.handoversIn.Load(), HandoversBusy: m.handoversBusy.Load(),
		MailboxYields: m.mailboxYields.Load(), MailboxMalformed: m.mailboxMalformed.Load(),
	}
}

// heartbeat renews the member's liveness key every LivenessTTL/3.
func (m *Member) heartbeat() {
	t := time.NewTicker(m.cfg.LivenessTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(m.ctx, m.cfg.Timeout)
		rev, err := m.kv.Put(ctx, memberKey(m.id), []byte(time.Now().UTC().Format(time.RFC3339Nano)))
		cancel()
		if err != nil {
			if m.ctx.Err() == nil {
				m.log.Warn("fleet: cannot renew the liveness key", "err", err)
			}
			continue
		}
		m.heartbeats.Add(1)
		m.mu.Lock()
		if m.ownSeenRev >= m.beatRev {
			// The last renewal came back: this one is the oldest not
			// seen back yet.
			m.beatAt = time.Now()
		}
		m.beatRev = rev
		m.mu.Unlock()
	}
}

// maxWritesInFlight bounds the writes a member has in flight at once.
const maxWritesInFlight = 32

// writeRetry is how long the writer waits after a failed write.
const writeRetry = 500 * time.Millisecond

// writer writes the queued changes to the bucket.
func (m *Member) writer() {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-m.wake:
		case <-retry.C:
		}
		m.pmu.Lock()
		batch := m.pending
		m.pending = make(map[string]change, len(batch))
		m.pmu.Unlock()
		// The keys of a batch are distinct, so their writes are
		// independent: up to maxWritesInFlight at once (each waits for its
		// acknowledgment, a quorum round trip in a cluster). The next
		// batch starts after this one, which keeps each key's changes in
		// order.
		var failed atomic.Int64
		var wg sync.WaitGroup
		sem := make(chan struct{}, maxWritesInFlight)
		for k, c := range batch {
			if m.ctx.Err() != nil {
				break
			}
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				err := m.write(k, c)
				if err == nil {
					return
				}
				m.writeErrors.Add(1)
				if failed.Add(1) == 1 {
					m.log.Warn("fleet: cannot write a registration; retrying", "err", err)
				}
				// Keep it unless a newer change of the key came meanwhile.
				m.pmu.Lock()
				if _, ok := m.pending[k]; !ok {
					m.pending[k] = c
				}
				m.pmu.Unlock()
			})
		}
		wg.Wait()
		if m.ctx.Err() != nil {
			return
		}
		if failed.Load() > 0 {
			retry.Reset(writeRetry)
		}
	}
}

// write writes one change to the bucket.
func (m *Member) write(k string, c change) error {
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.Timeout)
	defer cancel()
	if c.put {
		v, err := encodeRecord(c.rec, m.id)
		if err != nil {
			return err
		}
		rev, err := m.kv.Put(ctx, k, v)
		if err != nil {
			return err
		}
		m.writes.Add(1)
		m.mu.Lock()
		if rev > m.known[k].rev {
			m.known[k] = entryInfo{member: m.id, rev: rev}
		}
		m.mu.Unlock()
		return nil
	}
	m.mu.Lock()
	info, ok := m.known[k]
	m.mu.Unlock()
	if !ok {
		return nil // nothing of this key is in the bucket, as far as we know
	}
	err := m.remove(ctx, k, info.rev)
	if err != nil && !isWrongRevision(err) {
		return err
	}
	if err == nil {
		m.writes.Add(1)
	}
	return nil
}

// isWrongRevision reports whether err is a conditional write refused
// because the key changed since: another member wrote it, and its write
// stands.
func isWrongRevision(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	if apiErr, ok := errors.AsType[*jetstream.APIError](err); ok {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

// watch applies the bucket's entries to t until the member closes. It
// closes ready once the entries present at start are applied. A watch that
// stops delivering (the member's own renewals no longer come back through
// it, as after a NATS restart) is replaced by a new one, which replays the
// bucket.
func (m *Member) watch(w jetstream.KeyWatcher, t Table, ready chan struct{}) {
	defer func() {
		if w != nil {
			m.stopWatch(w)
		}
	}()
	check := time.NewTicker(max(m.cfg.LivenessTTL/4, 10*time.Millisecond))
	defer check.Stop()
	updates := w.Updates()
	initial := true
	seen := make(map[string]bool) // keys replayed by this watch before its end marker
	for {
		select {
		case <-m.ctx.Done():
			return
		case e, ok := <-updates:
			if !ok {
				m.log.Warn("fleet: the bucket's watch stopped; watching again")
				updates = nil
				continue
			}
			if e == nil {
				if initial {
					m.sweep(t, seen)
					initial, seen = false, nil
					if ready != nil {
						close(ready)
						ready = nil
					}
				}
				continue
			}
			if initial {
				seen[e.Key()] = true
			}
			m.entry(e, t, initial)
		case <-check.C:
			now := time.Now()
			m.checkMembers(t, now)
			if updates != nil && !m.watchStale(now) {
				continue
			}
			if w != nil {
				m.stopWatch(w)
				w, updates = nil, nil
			}
			nw, err := m.kv.WatchAll(m.ctx)
			if err != nil {
				m.log.Debug("fleet: cannot watch the bucket yet", "err", err)
				continue
			}
			m.log.Info("fleet: watching the bucket again")
			m.rewatches.Add(1)
			// The new watch gets a quarter of LivenessTTL to deliver a
			// renewal before it is judged stale in turn.
			m.mu.Lock()
			m.beatAt = now
			m.mu.Unlock()
			w, updates = nw, nw.Updates()
			initial, seen = true, make(map[string]bool)
		}
	}
}

// remove deletes key from the bucket if its last revision is rev (any
// revision if rev is 0): a purge whose marker tells the watchers, then
// expires after MarkerTTL, so that removed keys leave nothing behind.
func (m *Member) remove(ctx context.Context, key string, rev uint64) error {
	opts := []jetstream.KVDeleteOpt{jetstream.PurgeTTL(m.cfg.MarkerTTL)}
	if rev != 0 {
		opts = append(opts, jetstream.LastRevision(rev))
	}
	return m.kv.Purge(ctx, key, opts...)
}

// stopWatch stops w without waiting: stopping deletes its consumer with a
// request that waits up to nats.go's 5s timeout when the consumer's node is
// gone. Close waits for it, after closing a connection the member owns
// (which ends the request at once).
func (m *Member) stopWatch(w jetstream.KeyWatcher) {
	m.stops.Add(1)
	go func() {
		defer m.stops.Done()
		w.Stop()
	}()
}

// watchStale reports whether the watch lost the bucket: this member's
// last renewal was written a quarter of LivenessTTL ago and has not come
// back through it.
func (m *Member) watchStale(now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.beatRev != 0 && m.beatRev != m.ownSeenRev && now.Sub(m.beatAt) > m.cfg.LivenessTTL/4
}

// sweep removes, once a new watch has replayed the bucket, the other
// members' registrations it did not replay: deleted while this member was
// not watching.
func (m *Member) sweep(t Table, seen map[string]bool) {
	type gone struct {
		key    []byte
		member string
	}
	var gs []gone
	m.mu.Lock()
	for k, info := range m.known {
		if seen[k] || info.member == m.id {
			continue
		}
		delete(m.known, k)
		if key, err := hex.DecodeString(k[len(regPrefix):]); err == nil {
			gs = append(gs, gone{key, info.member})
		}
	}
	m.mu.Unlock()
	for _, g := range gs {
		if t.RemoveRemote(g.key, g.member) {
			m.removed.Add(1)
		}
	}
}

// entry applies one entry of the bucket.
func (m *Member) entry(e jetstream.KeyValueEntry, t Table, initial bool) {
	k := e.Key()
	del := e.Operation() != jetstream.KeyValuePut
	switch {
	case strings.HasPrefix(k, memberPrefix):
		id := k[len(memberPrefix):]
		if !validMember(id) {
			m.malformed.Add(1)
			m.log.Debug("fleet: ignored a malformed liveness key", "key", k)
			return
		}
		if id == m.id {
			if !del {
				m.ownRenewed(time.Now(), e.Revision())
			}
			return
		}
		if del {
			m.memberGone(t, id)
			return
		}
		m.mu.Lock()
		m.lastSeen[id] = time.Now()
		m.liveRev[id] = e.Revision()
		m.mu.Unlock()
	case strings.HasPrefix(k, regPrefix):
		m.regEntry(e, t, k, del, initial)
	default:
		m.foreign.Add(1)
		m.log.Debug("fleet: ignored a foreign key in the bucket", "key", k)
	}
}

// regEntry applies one registration entry.
func (m *Member) regEntry(e jetstream.KeyValueEntry, t Table, k string, del, initial bool) {
	m.mu.Lock()
	prev, had := m.known[k]
	if e.Revision() < prev.rev {
		m.mu.Unlock()
		return // older than what this member wrote or saw
	}
	if del {
		delete(m.known, k)
		m.mu.Unlock()
		key, err := hex.DecodeString(k[len(regPrefix):])
		if !had || err != nil {
			return
		}
		if prev.member != m.id {
			if t.RemoveRemote(key, prev.member) {
				m.removed.Add(1)
			}
			return
		}
		// Another member deleted this member's registration (it took this
		// member for dead): write it again if the relay still holds it.
		if rec, ok := t.FleetRecord(key); ok && rec.Member == "" {
			m.Put(rec)
		}
		return
	}
	m.mu.Unlock()
	rec, err := decodeRecord(k[len(regPrefix):], e.Value())
	if err != nil {
		m.malformed.Add(1)
		m.log.Debug("fleet: ignored a malformed registration", "key", k, "err", err)
		return
	}
	m.mu.Lock()
	m.known[k] = entryInfo{member: rec.Member, rev: e.Revision()}
	if _, ok := m.lastSeen[rec.Member]; !ok && rec.Member != m.id {
		// A member not heard of yet gets a full LivenessTTL to show it
		// is alive.
		m.lastSeen[rec.Member] = time.Now()
	}
	m.mu.Unlock()
	if rec.Member == m.id {
		if initial {
			// Left by an earlier run of this member: delete it, unless the
			// relay holds the key already (then the relay's write follows).
			if _, ok := t.FleetRecord(rec.Key); !ok {
				m.Remove(rec.Key)
			}
		}
		return
	}
	if err := t.ApplyRemote(rec); err != nil {
		m.refused.Add(1)
		m.log.Warn("fleet: relay refused a registration of another member", "member", rec.Member, "err", err)
		return
	}
	m.applied.Add(1)
}

// ownRenewed notes that this member saw its own liveness renewed at now.
// After a gap (its link to NATS was down), every other member gets a full
// LivenessTTL again to show it is alive: their renewals were as invisible
// as this member's own.
func (m *Member) ownRenewed(now time.Time, rev uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.ownSeen.IsZero() && now.Sub(m.ownSeen) > m.blindAfter() {
		for id := range m.lastSeen {
			m.lastSeen[id] = now
		}
	}
	m.ownSeen, m.ownSeenRev = now, rev
}

// blindAfter is how long after its own last renewal seen a member stops
// judging the others: two renewal periods.
func (m *Member) blindAfter() time.Duration { return 2 * m.cfg.LivenessTTL / 3 }

// checkMembers declares dead the members whose liveness was not renewed
// within LivenessTTL, unless this member's own link to NATS seems down:
// then they keep their registrations, and the relay forwards with the
// table it has.
func (m *Member) checkMembers(t Table, now time.Time) {
	var dead []string
	m.mu.Lock()
	if now.Sub(m.ownSeen) > m.blindAfter() {
		m.mu.Unlock()
		return
	}
	for id, seen := range m.lastSeen {
		if now.Sub(seen) > m.cfg.LivenessTTL {
			dead = append(dead, id)
		}
	}
	m.mu.Unlock()
	for _, id := range dead {
		m.memberGone(t, id)
	}
}

// memberGone removes the registrations of a dead member from the relay,
// and from the bucket those still as it wrote them.
func (m *Member) memberGone(t Table, id string) {
	m.mu.Lock()
	_, alive := m.lastSeen[id]
	liveRev, wasLive := m.liveRev[id]
	delete(m.lastSeen, id)
	delete(m.liveRev, id)
	var keys []string
	var revs []uint64
	for k, info := range m.known {
		if info.member == id {
			keys = append(keys, k)
			revs = append(revs, info.rev)
			delete(m.known, k)
		}
	}
	m.mu.Unlock()
	if !alive && len(keys) == 0 {
		return // gone already
	}
	n := t.RemoveMember(id)
	m.removed.Add(uint64(n))
	m.gone.Add(1)
	m.log.Info("fleet: member gone; its registrations removed", "gone", id, "registrations", n)
	// Clean the bucket. Every survivor tries; a write since (the peer
	// registered elsewhere) fails the revision check and stands.
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.Timeout)
	defer cancel()
	for i, k := range keys {
		if err := m.remove(ctx, k, revs[i]); err != nil && !isWrongRevision(err) {
			m.log.Debug("fleet: cannot delete a dead member's registration", "key", k, "err", err)
		}
	}
	if wasLive {
		if err := m.remove(ctx, memberKey(id), liveRev); err != nil && !isWrongRevision(err) {
			m.log.Debug("fleet: cannot delete a dead member's liveness key", "gone", id, "err", err)
		}
	}
}

package quicpipe

import (
	"crypto/ed25519"
	"time"
)

// localAddrsRefresh is how often the relay reads its host's addresses again.
const localAddrsRefresh = 10 * time.Second

// janitor removes expired registrations and follows registrations whose
// HTTP/3 connection migrated to a new address (a NAT rebinding), at once
// when the forwarding path asks (see wakeFollow).
func (r *Relay) janitor() {
	every := min(max(r.cfg.RegistrationTTL/10, 100*time.Millisecond), 500*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	refresh := time.NewTicker(localAddrsRefresh)
	defer refresh.Stop()
	for {
		select {
		case <-r.closed:
			return
		case <-t.C:
			r.expire(time.Now())
		case reg := <-r.follow:
			r.regMu.Lock()
			if r.regs.get(reg.key) == reg {
				r.followLocked(reg)
			}
			r.regMu.Unlock()
		case <-refresh.C:
			r.locals.refresh()
		}
	}
}

func (r *Relay) expire(now time.Time) {
	r.regMu.Lock()
	// Remote registrations of a fleet never expire: only the relay's own
	// are walked, so a member holding the fleet's table walks its share.
	r.regs.ownEntries(func(reg *regEntry) bool {
		if reg.Expires() < now.UnixNano() {
			r.removeLocked(reg)
			r.stats.expired.Add(1)
		} else {
			r.followLocked(reg)
		}
		return true
	})
	var unroute []string
	if r.sleep != nil {
		unroute = r.sleep.expireLocked(now)
	}
	r.regMu.Unlock()
	// A fleet's Release may wait on its NATS connection: outside regMu.
	for _, key := range unroute {
		r.cfg.MailboxRouter.Release(ed25519.PublicKey(key))
	}
}

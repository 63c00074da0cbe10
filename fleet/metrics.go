package fleet

import "github.com/prometheus/client_golang/prometheus"

// NewCollector returns a Prometheus collector for m's counters (Stats),
// named quicpipe_fleet_*, read at scrape time. Give it to
// relaymetrics.Listen beside the relay's, or register it in a service's own
// registry.
func NewCollector(m *Member) prometheus.Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("quicpipe_fleet_"+name, help, labels, nil)
	}
	return &collector{
		m:           m,
		writes:      d("writes_total", "Registrations this member wrote to the bucket (puts and deletes)."),
		heartbeats:  d("heartbeats_total", "Renewals of this member's liveness key."),
		writeErrors: d("write_errors_total", "Writes to the bucket that failed (they are retried)."),
		applied:     d("applied_total", "Other members' registrations applied to the relay."),
		removed:     d("removed_total", "Remote registrations removed from the relay."),
		ignored:     d("ignored_entries_total", "Bucket entries ignored, by reason.", "reason"),
		gone:        d("members_gone_total", "Members found dead."),
		rewatches:   d("rewatches_total", "Times the bucket was watched anew after the watch stopped delivering."),
		pending:     d("pending_writes", "Changes waiting to be written to the bucket."),
		held:        d("mailboxes_held", "Mailboxes the relay holds that this member routes posts to."),
		handovers:   d("mailbox_handovers_total", "Mailbox posts handed between members, by direction (out: to the holder; in: from a poster).", "direction"),
		hoFailures:  d("mailbox_handover_failures_total", "Mailbox posts this member could not hand over (NATS unreachable, no answer in time)."),
		hoBusy:      d("mailbox_handovers_busy_total", "Mailbox posts refused at the bound of hand-overs in progress."),
		yields:      d("mailbox_yields_total", "Mailboxes the relay let go because the accepter opened its mailbox at another member."),
		mboxBad:     d("mailbox_malformed_total", "Messages on a mailbox subject that were not understood."),
	}
}

type collector struct {
	m                               *Member
	writes, heartbeats, writeErrors *prometheus.Desc
	applied, removed, ignored, gone *prometheus.Desc
	rewatches, pending              *prometheus.Desc
	held, handovers, hoFailures     *prometheus.Desc
	hoBusy, yields, mboxBad         *prometheus.Desc
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.writes, c.heartbeats, c.writeErrors, c.applied, c.removed,
		c.ignored, c.gone, c.rewatches, c.pending, c.held, c.handovers, c.hoFailures, c.hoBusy, c.yields, c.mboxBad} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.m.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(c.writes, s.Writes)
	counter(c.heartbeats, s.Heartbeats)
	counter(c.writeErrors, s.WriteErrors)
	counter(c.applied, s.Applied)
	counter(c.removed, s.Removed)
	counter(c.ignored, s.Malformed, "malformed")
	counter(c.ignored, s.Foreign, "foreign")
	counter(c.ignored, s.Refused, "refused")
	counter(c.gone, s.MembersGone)
	counter(c.rewatches, s.Rewatches)
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(s.Pending))
	ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, float64(s.MailboxesHeld))
	counter(c.handovers, s.HandoversOut, "out")
	counter(c.handovers, s.HandoversIn, "in")
	counter(c.hoFailures, s.HandoverFailures)
	counter(c.hoBusy, s.HandoversBusy)
	counter(c.yields, s.MailboxYields)
	counter(c.mboxBad, s.MailboxMalformed)
}

package fleet

import (
	"context"
	"crypto/rand"
	"net/netip"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe"
)

// nopTable is a Table that holds nothing.
type nopTable struct{}

func (nopTable) ApplyRemote(quicpipe.FleetRecord) error { return nil }
func (nopTable) RemoveRemote([]byte, string) bool       { return false }
func (nopTable) RemoveMember(string) int                { return 0 }
func (nopTable) FleetRecord([]byte) (quicpipe.FleetRecord, bool) {
	return quicpipe.FleetRecord{}, false
}

// BenchmarkMemberWrites measures how fast one member writes its relay's
// changes to the bucket (one JetStream node on loopback): b.N registrations
// handed to Put at once, until all are acknowledged, as after a member's
// death when its peers register again at the survivors.
func BenchmarkMemberWrites(b *testing.B) {
	url, _ := startNATSServer(b, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m, err := New(ctx, Config{URL: url, Bucket: testBucket, Member: "w"})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	if err := m.Start(ctx, nopTable{}); err != nil {
		b.Fatal(err)
	}
	target := netip.MustParseAddrPort("192.0.2.1:4000")
	recs := make([]quicpipe.FleetRecord, b.N)
	for i := range recs {
		k := make([]byte, 16)
		rand.Read(k)
		recs[i] = quicpipe.FleetRecord{Key: k, First: 1, Num: 64, Target: target}
	}
	start := m.Stats().Writes
	b.ResetTimer()
	for _, r := range recs {
		m.Put(r)
	}
	for m.Stats().Writes-start < uint64(b.N) {
		if ctx.Err() != nil {
			b.Fatalf("%d of %d writes in 5 minutes", m.Stats().Writes-start, b.N)
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
}

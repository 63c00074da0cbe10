package quicpipe

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

// TestControlMessages checks the sealing, authentication and encoding of
// control datagrams.
func TestControlMessages(t *testing.T) {
	m := make([]byte, 72)
	for i := range m {
		m[i] = byte(i)
	}
	client, err := pathKeysFrom(m, true)
	if err != nil {
		t.Fatal(err)
	}
	server, _ := pathKeysFrom(m, false)
	other, _ := pathKeysFrom(append([]byte{99}, m[1:]...), false)

	cands := candidatesMsg{round: 7, ack: 3, needAck: true, cands: []candidate{
		{candObserved, netip.MustParseAddrPort("203.0.113.9:4000")},
		{candLocal, netip.MustParseAddrPort("[2001:db8::1]:4000")},
	}}
	dcid := CID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	pkt := client.seal(dcid[:], cands.marshal())
	if !isCtrl(pkt) || string(pkt[1:13]) != string(dcid[:]) {
		t.Fatalf("header %x", pkt[:13])
	}
	if tag, ok := ctrlTag(pkt); !ok || tag != server.tag {
		t.Fatalf("tag %x, want %x", tag, server.tag)
	}
	body, err := server.open(pkt)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseBody(body)
	if err != nil {
		t.Fatal(err)
	}
	if g := got.(*candidatesMsg); fmt.Sprint(*g) != fmt.Sprint(cands) {
		t.Errorf("candidates %+v, want %+v", *g, cands)
	}
	// The sender cannot open its own message (a reflected probe), nor a
	// peer of another session, and no bit may change.
	if _, err := client.open(pkt); err == nil {
		t.Error("a side opened its own message")
	}
	if _, err := other.open(pkt); err == nil {
		t.Error("another session's keys opened the message")
	}
	for i := range pkt {
		bad := append([]byte(nil), pkt...)
		bad[i] ^= 0x01
		if _, err := server.open(bad); err == nil {
			t.Fatalf("flipping a bit of byte %d went unnoticed", i)
		}
	}
	ping := probeMsg{typ: msgPing, txid: [8]byte{9, 8, 7}, addr: netip.MustParseAddrPort("10.0.0.2:5")}
	body, err = client.open(server.seal(nil, ping.marshal()))
	if err != nil {
		t.Fatal(err)
	}
	if g, err := parseBody(body); err != nil || *g.(*probeMsg) != ping {
		t.Errorf("ping %+v, %v", g, err)
	}
}

// FuzzParseBody feeds arbitrary bodies to the control message parser.
func FuzzParseBody(f *testing.F) {
	f.Add((&probeMsg{typ: msgPong, addr: netip.MustParseAddrPort("1.2.3.4:5")}).marshal())
	f.Add((&candidatesMsg{round: 1, cands: []candidate{{candLocal, netip.MustParseAddrPort("[::1]:9")}}}).marshal())
	f.Add([]byte{msgCandidates, 0, 0, 0, 0, 1, 0, 0, 0, 0, 200})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseBody(b)
		if err != nil {
			if !errors.Is(err, errCtrl) {
				t.Fatalf("error %v", err)
			}
			return
		}
		var again []byte
		switch m := m.(type) {
		case *probeMsg:
			again = m.marshal()
		case *candidatesMsg:
			again = m.marshal()
		}
		if m2, err := parseBody(again); err != nil || fmt.Sprint(m2) != fmt.Sprint(m) {
			t.Fatalf("round trip: %v, %v != %v", err, m2, m)
		}
	})
}

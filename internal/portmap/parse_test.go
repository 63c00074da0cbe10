package portmap

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"
)

func pmpMapReplyBytes(code uint16, in, ext uint16, life uint32) []byte {
	b := make([]byte, 16)
	b[0], b[1] = 0, 129
	binary.BigEndian.PutUint16(b[2:], code)
	binary.BigEndian.PutUint32(b[4:], 42)
	binary.BigEndian.PutUint16(b[8:], in)
	binary.BigEndian.PutUint16(b[10:], ext)
	binary.BigEndian.PutUint32(b[12:], life)
	return b
}

func pcpMapReplyBytes(code uint8, nonce [12]byte, in uint16, ext netip.AddrPort, life uint32) []byte {
	b := make([]byte, 60)
	b[0], b[1], b[3] = 2, 0x81, code
	binary.BigEndian.PutUint32(b[4:], life)
	binary.BigEndian.PutUint32(b[8:], 7)
	copy(b[24:], nonce[:])
	b[36] = 17
	binary.BigEndian.PutUint16(b[40:], in)
	binary.BigEndian.PutUint16(b[42:], ext.Port())
	a := netip.AddrFrom16(ext.Addr().As16()).As16()
	copy(b[44:], a[:])
	return b
}

func TestPMPReplies(t *testing.T) {
	r, err := parsePMPMapReply(pmpMapReplyBytes(0, 4000, 4001, 7200))
	if err != nil || r.internal != 4000 || r.external != 4001 || r.lifetime != 2*time.Hour || r.epoch != 42 {
		t.Fatalf("map reply: %+v, %v", r, err)
	}
	var re *ResultError
	if _, err := parsePMPMapReply(pmpMapReplyBytes(2, 4000, 4001, 7200)); !errors.As(err, &re) || re.Code != 2 || re.Protocol != NATPMP {
		t.Errorf("refusal: %v", err)
	}
	if _, err := parsePMPMapReply(pmpMapReplyBytes(0, 4000, 4001, 7200)[:15]); !errors.Is(err, errMalformed) {
		t.Errorf("truncated: %v", err)
	}
	// A PCP-only gateway answers NAT-PMP with a PCP "unsupported version".
	if _, err := parsePMPAddrReply([]byte{2, 0x80, 0, 1}); !errors.As(err, &re) || re.Code != pmpResultBadVers {
		t.Errorf("PCP answer to NAT-PMP: %v", err)
	}
	a, err := parsePMPAddrReply([]byte{0, 128, 0, 0, 0, 0, 0, 9, 11, 1, 0, 2})
	if err != nil || a.addr != netip.MustParseAddr("11.1.0.2") || a.epoch != 9 {
		t.Errorf("address reply: %+v, %v", a, err)
	}
	req := pmpMapRequest(4000, 4001, 90*time.Second)
	if len(req) != 12 || req[1] != 1 || binary.BigEndian.Uint16(req[4:]) != 4000 || binary.BigEndian.Uint16(req[6:]) != 4001 || binary.BigEndian.Uint32(req[8:]) != 90 {
		t.Errorf("map request % x", req)
	}
}

func TestPCPReplies(t *testing.T) {
	nonce := [12]byte{1, 2, 3}
	ext := netip.MustParseAddrPort("11.1.0.2:5000")
	r, err := parsePCPMapReply(pcpMapReplyBytes(0, nonce, 4000, ext, 600), nonce)
	if err != nil || r.internal != 4000 || r.external != ext || r.lifetime != 10*time.Minute {
		t.Fatalf("map reply: %+v, %v", r, err)
	}
	if _, err := parsePCPMapReply(pcpMapReplyBytes(0, [12]byte{9}, 4000, ext, 600), nonce); !errors.Is(err, errMalformed) {
		t.Errorf("another nonce: %v", err)
	}
	var re *ResultError
	if _, err := parsePCPMapReply(pcpMapReplyBytes(8, nonce, 4000, ext, 600), nonce); !errors.As(err, &re) || re.Code != 8 {
		t.Errorf("refusal: %v", err)
	}
	if _, err := parsePCPMapReply([]byte{0, 129, 0, 1}, nonce); !errors.As(err, &re) || re.Protocol != PCP {
		t.Errorf("NAT-PMP answer to PCP: %v", err)
	}
	if _, err := parsePCPMapReply(append(pcpMapReplyBytes(0, nonce, 4000, ext, 600), 0), nonce); !errors.Is(err, errMalformed) {
		t.Errorf("not a multiple of 4: %v", err)
	}
	req := pcpMapRequest(netip.MustParseAddr("10.1.0.2"), nonce, 4000, 0, netip.Addr{}, time.Hour)
	if len(req) != 60 || req[0] != 2 || req[1] != 1 || netip.AddrFrom16([16]byte(req[8:24])).Unmap() != netip.MustParseAddr("10.1.0.2") ||
		binary.BigEndian.Uint32(req[4:]) != 3600 || req[36] != 17 || binary.BigEndian.Uint16(req[40:]) != 4000 ||
		netip.AddrFrom16([16]byte(req[44:60])) != netip.MustParseAddr("::ffff:0.0.0.0") {
		t.Errorf("map request % x", req)
	}
	if err := parsePCPAnnounceReply(append([]byte{2, 0x80, 0, 0}, make([]byte, 20)...)); err != nil {
		t.Errorf("announce reply: %v", err)
	}
}

// FuzzPMPReply feeds NAT-PMP reply parsers anything: they must not panic,
// and what they accept must have the reply's shape.
func FuzzPMPReply(f *testing.F) {
	f.Add(pmpMapReplyBytes(0, 4000, 4001, 7200))
	f.Add([]byte{0, 128, 0, 0, 0, 0, 0, 9, 11, 1, 0, 2})
	f.Add([]byte{2, 0x81, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := parsePMPMapReply(b); err == nil && (len(b) < 16 || b[1] != 129 || r.lifetime < 0) {
			t.Fatalf("accepted % x", b)
		}
		if _, err := parsePMPAddrReply(b); err == nil && (len(b) < 12 || b[1] != 128) {
			t.Fatalf("accepted % x", b)
		}
	})
}

// FuzzPCPReply feeds PCP reply parsers anything.
func FuzzPCPReply(f *testing.F) {
	nonce := [12]byte{1, 2, 3}
	f.Add(pcpMapReplyBytes(0, nonce, 4000, netip.MustParseAddrPort("11.1.0.2:5000"), 600))
	f.Add(pcpMapReplyBytes(8, nonce, 4000, netip.MustParseAddrPort("11.1.0.2:5000"), 600))
	f.Add(append([]byte{2, 0x80, 0, 0}, make([]byte, 20)...))
	f.Add([]byte{0, 129, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := parsePCPMapReply(b, nonce); err == nil && (len(b) < 60 || len(b) > pcpMaxMessage || b[36] != 17) {
			t.Fatalf("accepted % x", b)
		}
		if err := parsePCPAnnounceReply(b); err == nil && (len(b) < 24 || b[1] != 0x80) {
			t.Fatalf("accepted % x", b)
		}
	})
}

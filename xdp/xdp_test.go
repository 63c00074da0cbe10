package xdp

import (
	"errors"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

func TestConfigPopulate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    Config
		attach bool
		ok     bool
	}{
		{"zero, load", Config{}, false, true},
		{"zero, attach", Config{}, true, false},
		{"attach", Config{Interface: "eth0", Ports: []uint16{4433}}, true, true},
		{"port zero", Config{Ports: []uint16{4433, 0}}, false, false},
		{"too many ports", Config{Ports: []uint16{1, 2, 3, 4, 5, 6, 7, 8, 9}}, false, false},
		{"eight ports", Config{Ports: []uint16{1, 2, 3, 4, 5, 6, 7, 8}}, false, true},
		{"bad mode", Config{Mode: Mode(7)}, false, false},
		{"negative map size", Config{MapSize: -1}, false, false},
		{"huge map size", Config{MapSize: maxMapSize + 1}, false, false},
		{"negative buckets", Config{Buckets: -1}, false, false},
		{"rates", Config{MaxPacketsPerSecond: 1000, MaxTotalBytesPerSecond: MaxRate}, false, true},
		{"negative rate is unlimited", Config{MaxBytesPerSecond: -1}, false, true},
		{"rate above MaxRate", Config{MaxTotalPacketsPerSecond: MaxRate + 1}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.cfg.populate(tc.attach)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok = %v", err, tc.ok)
			}
			if err == nil && c.MapSize == 0 {
				t.Error("MapSize default not filled in")
			}
			if err != nil && !strings.HasPrefix(err.Error(), "xdp: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
	ports := []uint16{4433}
	c, _ := Config{Ports: ports}.populate(false)
	c.Ports[0] = 1
	if ports[0] != 4433 {
		t.Error("populate shares the caller's Ports")
	}
}

func TestMakeEntry(t *testing.T) {
	cid := [CIDLen]byte{0x12}
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name     string
		cid      [CIDLen]byte
		dst, src netip.AddrPort
		want     entry // checked when ok
		ok       bool
	}{
		{name: "ipv4", cid: cid, dst: ap("203.0.113.2:5555"), src: ap("198.51.100.2:4433"), ok: true, want: entry{
			dst:     [16]byte{10: 0xff, 11: 0xff, 12: 203, 13: 0, 14: 113, 15: 2},
			src:     [16]byte{10: 0xff, 11: 0xff, 12: 198, 13: 51, 14: 100, 15: 2},
			dstPort: [2]byte{0x15, 0xb3}, srcPort: [2]byte{0x11, 0x51}, family: 4,
		}},
		{name: "ipv4-mapped", cid: cid, dst: ap("[::ffff:203.0.113.2]:5555"), src: ap("[::ffff:198.51.100.2]:4433"), ok: true, want: entry{
			dst:     [16]byte{10: 0xff, 11: 0xff, 12: 203, 13: 0, 14: 113, 15: 2},
			src:     [16]byte{10: 0xff, 11: 0xff, 12: 198, 13: 51, 14: 100, 15: 2},
			dstPort: [2]byte{0x15, 0xb3}, srcPort: [2]byte{0x11, 0x51}, family: 4,
		}},
		{name: "ipv6, source from packet", cid: cid, dst: ap("[2001:db8::1]:1"), ok: true, want: entry{
			dst:     [16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 1},
			dstPort: [2]byte{0, 1}, family: 6, flags: srcAddrFromPacket | srcPortFromPacket,
		}},
		{name: "unspecified source address, given port", cid: cid, dst: ap("[2001:db8::1]:1"), src: ap("0.0.0.0:4433"), ok: true, want: entry{
			dst:     [16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 1},
			dstPort: [2]byte{0, 1}, srcPort: [2]byte{0x11, 0x51}, family: 6, flags: srcAddrFromPacket,
		}},
		{name: "relay CID", cid: [CIDLen]byte{0x80}, dst: ap("203.0.113.2:5555")},
		{name: "no destination", cid: cid},
		{name: "unspecified destination", cid: cid, dst: ap("0.0.0.0:5555")},
		{name: "destination port 0", cid: cid, dst: ap("203.0.113.2:0")},
		{name: "family mismatch", cid: cid, dst: ap("203.0.113.2:5555"), src: ap("[2001:db8::1]:4433")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := makeEntry(tc.cid, tc.dst, tc.src)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok = %v", err, tc.ok)
			}
			if err == nil && e != tc.want {
				t.Errorf("entry\n%+v, want\n%+v", e, tc.want)
			}
		})
	}
}

// TestOutcomeNames checks the Go outcomes against enum outcome in
// quicpipe.c, name by name.
func TestOutcomeNames(t *testing.T) {
	src, err := os.ReadFile("quicpipe.c")
	if err != nil {
		t.Fatal(err)
	}
	body := regexp.MustCompile(`(?s)enum outcome \{(.*?)\};`).FindSubmatch(src)
	if body == nil {
		t.Fatal("enum outcome not found in quicpipe.c")
	}
	names := regexp.MustCompile(`(?m)^\s*OUTCOME_(\w+)`).FindAllSubmatch(body[1], -1)
	if len(names) != int(NumOutcomes)+1 {
		t.Fatalf("quicpipe.c has %d outcomes before OUTCOME_LEN, Go has %d", len(names)-1, NumOutcomes)
	}
	for i, m := range names[:NumOutcomes] {
		c := strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(string(m[1]), "PASS_"), "DROP_"))
		if got := Outcome(i).String(); got != c {
			t.Errorf("outcome %d: Go %q, C %q", i, got, c)
		}
	}
	if string(names[NumOutcomes][1]) != "LEN" {
		t.Errorf("last outcome %s, want OUTCOME_LEN", names[NumOutcomes][1])
	}
}

func TestCounters(t *testing.T) {
	var c Counters
	c[ForwardedIPv4] = Stat{3, 300}
	c[ForwardedIPv6] = Stat{1, 100}
	c[PassMiss] = Stat{2, 20}
	c[PassTTL] = Stat{1, 10}
	if got := c.Forwarded(); got != (Stat{4, 400}) {
		t.Errorf("Forwarded = %+v", got)
	}
	c[DropRateLimit] = Stat{5, 50}
	if got := c.Passed(); got != (Stat{3, 30}) {
		t.Errorf("Passed = %+v", got)
	}
	if got := c.Dropped(); got != (Stat{5, 50}) {
		t.Errorf("Dropped = %+v", got)
	}
	m := c.Map()
	if len(m) != int(NumOutcomes) || m["miss"] != (Stat{2, 20}) || m["forwarded_ipv6"] != (Stat{1, 100}) {
		t.Errorf("Map = %v", m)
	}
}

func TestNotSupported(t *testing.T) {
	if runtime.GOOS == "linux" {
		t.Skip("xdp: Linux supports XDP")
	}
	if _, err := Load(Config{}); !errors.Is(err, ErrNotSupported) {
		t.Errorf("Load: %v", err)
	}
	if _, err := Attach(Config{Interface: "en0"}); !errors.Is(err, ErrNotSupported) {
		t.Errorf("Attach: %v", err)
	}
}

package addrprobe

import (
	"errors"
	"net/netip"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	id := TxID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	req := AppendRequest(nil, id)
	if len(req) != Size || !IsProbe(req) || req[0]&0xc0 != 0 {
		t.Fatalf("request %x", req)
	}
	got, err := ParseRequest(req)
	if err != nil || got != id {
		t.Fatalf("ParseRequest = %x, %v", got, err)
	}
	for _, from := range []string{"198.51.100.7:40000", "[2001:db8::5]:1", "[::ffff:192.0.2.1]:9"} {
		ap := netip.MustParseAddrPort(from)
		rep := AppendReply(nil, id, ap)
		if len(rep) != Size {
			t.Fatalf("reply of %d bytes", len(rep))
		}
		gid, gap, err := ParseReply(rep)
		want := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if err != nil || gid != id || gap != want {
			t.Errorf("ParseReply(%v) = %x %v %v", ap, gid, gap, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	id := TxID{9}
	req := AppendRequest(nil, id)
	rep := AppendReply(nil, id, netip.MustParseAddrPort("192.0.2.1:5"))
	for _, c := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrMagic},
		{"short request", req[:Size-1], ErrShort},
		{"reply as request", rep, ErrType},
		{"other magic", append([]byte{0x40}, req[1:]...), ErrMagic},
	} {
		if _, err := ParseRequest(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: ParseRequest error %v, want %v", c.name, err, c.want)
		}
	}
	bad := append([]byte(nil), rep...)
	bad[5] = 5
	if _, _, err := ParseReply(bad); !errors.Is(err, ErrAddress) {
		t.Errorf("bad family: %v", err)
	}
	zero := AppendReply(nil, id, netip.MustParseAddrPort("192.0.2.1:0"))
	if _, _, err := ParseReply(zero); !errors.Is(err, ErrAddress) {
		t.Errorf("port 0: %v", err)
	}
	if _, _, err := ParseReply(req); !errors.Is(err, ErrType) {
		t.Errorf("request as reply: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(AppendRequest(nil, TxID{1}))
	f.Add(AppendReply(nil, TxID{1}, netip.MustParseAddrPort("[2001:db8::1]:443")))
	f.Fuzz(func(t *testing.T, b []byte) {
		if id, err := ParseRequest(b); err == nil {
			if got, _ := ParseRequest(AppendRequest(nil, id)); got != id {
				t.Fatal("request round trip")
			}
		}
		if id, ap, err := ParseReply(b); err == nil {
			gid, gap, err := ParseReply(AppendReply(nil, id, ap))
			if err != nil || gid != id || gap != ap {
				t.Fatalf("reply round trip: %v %v %v", gap, ap, err)
			}
		}
	})
}

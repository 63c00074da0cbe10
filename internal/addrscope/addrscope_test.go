package addrscope

import (
	"net/netip"
	"testing"
)

func TestOf(t *testing.T) {
	for _, c := range []struct {
		addr string
		want Scope
	}{
		{"127.0.0.1", Loopback},
		{"::1", Loopback},
		{"::ffff:127.0.0.1", Loopback},
		{"169.254.1.1", LinkLocal},
		{"fe80::1", LinkLocal},
		{"10.1.2.3", Private},
		{"172.16.0.1", Private},
		{"192.168.1.1", Private},
		{"100.64.0.1", Private},
		{"fd00::1", Private},
		{"8.8.8.8", Public},
		{"2001:db8::1", Public},
		{"100.128.0.1", Public},
		{"0.0.0.0", Invalid},
		{"0.1.2.3", Invalid},
		{"::", Invalid},
		{"224.0.0.1", Invalid},
		{"ff02::1", Invalid},
		{"255.255.255.255", Invalid},
	} {
		if got := Of(netip.MustParseAddr(c.addr)); got != c.want {
			t.Errorf("Of(%s) = %v, want %v", c.addr, got, c.want)
		}
	}
	if got := Of(netip.Addr{}); got != Invalid {
		t.Errorf("Of(zero Addr) = %v, want invalid", got)
	}
	if s := Scope(200).String(); s != "invalid" {
		t.Errorf("Scope(200).String() = %q", s)
	}
}

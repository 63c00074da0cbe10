//go:build !quicpipe_noupnp

package portmap

import (
	"net/netip"
	"testing"
)

func TestParseSSDP(t *testing.T) {
	m := &upnpMapper{c: &Client{cfg: Config{Gateway: netip.MustParseAddr("10.1.0.1")}}}
	ok := "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://10.1.0.1:40000/rootDesc.xml\r\n\r\n"
	if loc, err := m.parseSSDP([]byte(ok)); err != nil || loc.Host != "10.1.0.1:40000" {
		t.Errorf("%v, %v", loc, err)
	}
	for _, bad := range []string{
		"HTTP/1.1 200 OK\r\nLOCATION: http://10.1.0.7:40000/rootDesc.xml\r\n\r\n", // another host
		"HTTP/1.1 200 OK\r\nLOCATION: https://10.1.0.1/x\r\n\r\n",
		"HTTP/1.1 404 Not Found\r\nLOCATION: http://10.1.0.1:1/x\r\n\r\n",
		"NOTIFY * HTTP/1.1\r\n\r\n",
		"garbage",
	} {
		if _, err := m.parseSSDP([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

// FuzzSSDP feeds the SSDP answer parser anything: it must not panic, and
// a location it accepts is on the gateway.
func FuzzSSDP(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nLOCATION: http://10.1.0.1:40000/rootDesc.xml\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nLOCATION: http://[::ffff:10.1.0.1]:1/\r\n\r\n"))
	gw := netip.MustParseAddr("10.1.0.1")
	m := &upnpMapper{c: &Client{cfg: Config{Gateway: gw}}}
	f.Fuzz(func(t *testing.T, b []byte) {
		loc, err := m.parseSSDP(b)
		if err != nil {
			return
		}
		if h, err := netip.ParseAddr(loc.Hostname()); err != nil || h.Unmap() != gw || loc.Scheme != "http" {
			t.Fatalf("accepted location %v", loc)
		}
	})
}

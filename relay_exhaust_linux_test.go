package quicpipe

import (
	"fmt"
	"net/http"
	"net/netip"
	"testing"

	"github.com/quicpipe/quicpipe/internal/netlab"
)

// TestRelaySourceIPv6Prefix: the addresses of one IPv6 /64 are one source.
// In a namespace of its own the test puts the relay and clients on lo:
//
//	relay   fd00:12:0:1::1
//	clients fd00:12:0:1::2 .. ::5   (one /64: one source)
//	client  fd00:12:0:2::2          (another /64)
//
// The clients of the first /64 share one quota of registrations and CIDs;
// the other /64 has its own.
func TestRelaySourceIPv6Prefix(t *testing.T) {
	ns := netlab.New(t).NS("v6src")
	addrs := []string{"fd00:12:0:1::1", "fd00:12:0:1::2", "fd00:12:0:1::3", "fd00:12:0:1::4", "fd00:12:0:1::5", "fd00:12:0:2::2"}
	for _, a := range addrs {
		ns.Run("ip", "-6", "addr", "add", a+"/128", "dev", "lo", "nodad")
	}
	conn, err := ns.ListenUDP("udp6", "["+addrs[0]+"]:0")
	if err != nil {
		t.Fatal(err)
	}
	relayID := GenerateIdentity()
	r, err := NewRelay(conn, &RelayConfig{Identity: relayID, MaxRegistrationsPerSource: 6, DerivationBurst: 1e6, Logger: testLogger(t)})
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	serveRelay(t, r, func() { conn.Close() })
	client := func(ip string) *apiClient {
		udp, err := ns.ListenUDP("udp6", "["+ip+"]:0")
		if err != nil {
			t.Fatal(err)
		}
		return newAPIClientOn(t, pub(relayID), r.udpAddr(), udp)
	}
	prefix := netip.MustParsePrefix("fd00:12:0:1::/64")

	// Registrations: 6 for the /64, however many addresses it spreads over.
	var same []*apiClient
	for _, ip := range addrs[1:5] {
		same = append(same, client(ip))
	}
	regs := 0
	for k := range 3 {
		for i, c := range same {
			a := c.do(t, http.MethodPost, registerPath, regBody([]byte(fmt.Sprintf("v6-key-%02d-%02d-padding", i, k)), 0, 8))
			if a.status == http.StatusOK {
				regs++
				continue
			}
			checkAPIError(t, a, http.StatusTooManyRequests, "limit_source")
		}
	}
	if regs != 6 {
		t.Errorf("registrations from 4 addresses of one /64: got %d, want 6 (the limit per source)", regs)
	}
	if u := relaySnapshot(r).perSource[prefix]; u != (sourceUsage{regs: 6, cids: 48}) {
		t.Errorf("usage of %s: got %+v, want 6 registrations, 48 CIDs", prefix, u)
	}
	// CIDs: the /64 holds at most MaxCIDsPerSource, spread or not.
	for i, c := range same {
		c.do(t, http.MethodDelete, registerPath, regBody([]byte(fmt.Sprintf("v6-key-%02d-%02d-padding", i, 0)), 0, 0))
		c.do(t, http.MethodDelete, registerPath, regBody([]byte(fmt.Sprintf("v6-key-%02d-%02d-padding", i, 1)), 0, 0))
	}
	num := int64(r.cfg.MaxCIDsPerRegistration)
	held := 0
	for i, c := range same {
		a := c.do(t, http.MethodPost, registerPath, regBody(fixedKey(byte(0x60+i)), 0, num))
		if a.status == http.StatusOK {
			held += int(num)
			continue
		}
		checkAPIError(t, a, http.StatusTooManyRequests, "limit_source_cids")
	}
	if held != r.cfg.MaxCIDsPerSource {
		t.Errorf("CIDs registered from 4 addresses of one /64: got %d, want %d (the limit per source)", held, r.cfg.MaxCIDsPerSource)
	}
	// Another /64 is another source.
	other := client(addrs[5])
	other.register(t, fixedKey(0x70), 0, num)
	other.register(t, fixedKey(0x71), 0, num)
	checkCIDWindow(t, r, fixedKey(0x71), 1, uint32(num), other.addr())
}

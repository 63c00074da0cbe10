package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quicpipe/quicpipe/internal/addrprobe"
	"github.com/quicpipe/quicpipe/internal/portmap"
)

// TestDoctorUsage: the doctor needs a relay and its key.
func TestDoctorUsage(t *testing.T) {
	for _, args := range [][]string{
		{"doctor"},
		{"doctor", "-relay", "192.0.2.1:4433"},
		{"doctor", "-relay", "192.0.2.1:4433", "-relay-key", "x", "extra"},
		{"doctor", "-relay", "192.0.2.1:65535", "-relay-key", strings.Repeat("A", 43)},
	} {
		var stderr bytes.Buffer
		e := &env{args: args, stdout: &bytes.Buffer{}, stderr: &stderr}
		if code := run(context.Background(), e); code != 2 {
			t.Errorf("%q: exit %d, want 2; %s", args, code, stderr.String())
		}
	}
}

// TestVerdict: the mapping and verdict from what the probes saw.
func TestVerdict(t *testing.T) {
	ap := netip.MustParseAddrPort
	local := ap("10.0.0.2:5000")
	pr := func(obs ...string) []probeResult {
		var out []probeResult
		for _, o := range obs {
			var a netip.AddrPort
			if o != "" {
				a = ap(o)
			}
			out = append(out, probeResult{observed: a})
		}
		return out
	}
	gw := netip.MustParseAddr("10.0.0.1")
	mapsPorts := portmap.ProbeResult{Gateway: gw, Protocols: []portmap.Protocol{portmap.PCP, portmap.NATPMP}}
	for _, c := range []struct {
		udp    bool
		probes []probeResult
		pm     portmap.ProbeResult
		pmErr  error
		want   string
	}{
		{true, pr("198.51.100.2:5000", "198.51.100.2:5000"), portmap.ProbeResult{}, nil, verdictLikely},
		{true, pr("10.0.0.2:5000", ""), portmap.ProbeResult{}, nil, verdictLikely},
		{true, pr("198.51.100.2:5000", "198.51.100.2:6000"), portmap.ProbeResult{Gateway: gw}, nil, verdictEasyOnly},
		{true, pr("198.51.100.2:5000", "198.51.100.2:6000"), mapsPorts, nil, verdictLikely + " (the NAT maps by destination, but the gateway maps ports with PCP, NAT-PMP"},
		{true, pr("198.51.100.2:5000", "198.51.100.2:6000"), portmap.ProbeResult{}, portmap.ErrNoDefaultGateway, verdictEasyOnly},
		{true, pr("", ""), mapsPorts, nil, verdictUnknown},
		{true, pr("198.51.100.2:5000", ""), portmap.ProbeResult{}, nil, "direct connections: unknown (only one probe port answered"},
		{false, pr("198.51.100.2:5000", "198.51.100.2:5000"), portmap.ProbeResult{}, nil, "relay only"},
	} {
		r := &netReport{udp: c.udp, local: local, probes: c.probes, pm: c.pm, pmErr: c.pmErr}
		if got := r.verdict(); !strings.HasPrefix(got, c.want) {
			t.Errorf("udp %v, probes %v, port mapping %+v %v: verdict %q, want %q", c.udp, c.probes, c.pm, c.pmErr, got, c.want)
		}
	}
}

// TestListenProbes: the relay's -probe flag.
func TestListenProbes(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	taken, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := taken.LocalAddr().(*net.UDPAddr).Port
	for _, c := range []struct {
		spec, listen string
		n            int
		fails        bool
	}{
		{"off", "127.0.0.1:4433", 0, false},
		{"auto", "127.0.0.1:0", 0, false},
		{"auto", "127.0.0.1:" + strconv.Itoa(port-1), 1, false}, // port+1 is taken: a warning
		{"127.0.0.1:0,127.0.0.1:0", "127.0.0.1:4433", 2, false},
		{"127.0.0.1:0," + taken.LocalAddr().String(), "127.0.0.1:4433", 0, true},
		{"nonsense", "127.0.0.1:4433", 0, true},
	} {
		conns, err := listenProbes(c.spec, c.listen, log)
		for _, pc := range conns {
			pc.Close()
		}
		if (err != nil) != c.fails || len(conns) != c.n {
			t.Errorf("-probe %q with -listen %s: %d sockets, error %v; want %d, failing %v", c.spec, c.listen, len(conns), err, c.n, c.fails)
		}
	}
}

// TestProbeAllMatches: a probe's answer counts only with the request's
// transaction ID and from the address it went to; a forged or stray
// reply is ignored, and a target that never answers stays unanswered.
func TestProbeAllMatches(t *testing.T) {
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	responder, forger, silent, client := listen(), listen(), listen(), listen()
	forged := netip.MustParseAddrPort("203.0.113.9:9")
	// The responder answers each request twice: first with another
	// transaction ID claiming the forged address, then correctly; the
	// forger answers the client with the request's ID but from its own
	// address.
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := responder.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			id, err := addrprobe.ParseRequest(buf[:n])
			if err != nil {
				continue
			}
			other := id
			other[0] ^= 0xff
			responder.WriteToUDPAddrPort(addrprobe.AppendReply(nil, other, forged), from)
			forger.WriteToUDPAddrPort(addrprobe.AppendReply(nil, id, forged), from)
			responder.WriteToUDPAddrPort(addrprobe.AppendReply(nil, id, from), from)
		}
	}()
	tr := &quic.Transport{Conn: client}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	to := responder.LocalAddr().(*net.UDPAddr).AddrPort()
	res := probeAll(ctx, tr, []netip.AddrPort{to, silent.LocalAddr().(*net.UDPAddr).AddrPort()})
	me := client.LocalAddr().(*net.UDPAddr).AddrPort()
	if res[0].observed != me {
		t.Errorf("observed %v, want %v (the forged %v must be ignored)", res[0].observed, me, forged)
	}
	if res[1].observed.IsValid() {
		t.Errorf("the silent target answered %v", res[1].observed)
	}
}

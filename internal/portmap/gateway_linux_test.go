package portmap

import (
	"net/netip"
	"testing"
)

func TestParseProcRoute(t *testing.T) {
	const table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
		"eth0\t0001010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" +
		"eth0\t00000000\t0101010A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
	gw, err := parseProcRoute(table)
	// The fields are native integers: little-endian on the machines this
	// runs on (amd64, arm64).
	if want := netip.MustParseAddr("10.1.1.1"); err != nil || gw != want {
		t.Errorf("gateway %v, %v; want %v", gw, err, want)
	}
	if _, err := parseProcRoute(table[:100]); err == nil {
		t.Error("no default route, but no error")
	}
}

package portmap

import (
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"os"
	"strings"
)

// defaultGateway reads the default IPv4 route from /proc/net/route (the
// routing table of the process's network namespace).
func defaultGateway() (netip.Addr, error) {
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return netip.Addr{}, err
	}
	return parseProcRoute(string(b))
}

// parseProcRoute returns the gateway of the first default route in the
// text of /proc/net/route.
func parseProcRoute(s string) (netip.Addr, error) {
	for line := range strings.Lines(s) {
		f := strings.Fields(line)
		// Iface Destination Gateway Flags ...; addresses as native integers.
		if len(f) < 4 || f[1] != "00000000" {
			continue
		}
		gw, err := hex.DecodeString(f[2])
		if err != nil || len(gw) != 4 {
			continue
		}
		// The kernel prints the address's 32 bits as a native integer.
		a := netip.AddrFrom4([4]byte(binary.NativeEndian.AppendUint32(nil, binary.BigEndian.Uint32(gw))))
		if !a.IsUnspecified() {
			return a, nil
		}
	}
	return netip.Addr{}, ErrNoDefaultGateway
}

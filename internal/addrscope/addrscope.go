// Package addrscope classifies IP addresses by how far they reach: this
// host, one link, a private network, or the internet. The relay uses it to
// decide which forwarding targets a connection may register, and peers to
// decide which of their addresses to offer for a direct path.
package addrscope

import "net/netip"

// Scope is how far an address reaches, narrowest first; Invalid is not a
// unicast address at all.
type Scope uint8

const (
	Loopback  Scope = iota // this host (127/8, ::1)
	LinkLocal              // one link (169.254/16, fe80::/10)
	Private                // a private network (RFC 1918, RFC 6598 100.64/10, fc00::/7)
	Public                 // anything else
	Invalid                // unspecified, multicast, broadcast, 0/8
)

var (
	sharedSpace = netip.MustParsePrefix("100.64.0.0/10") // RFC 6598, carrier-grade NAT
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8")     // RFC 791: "this network", never a destination
	broadcast   = netip.AddrFrom4([4]byte{255, 255, 255, 255})
	names       = [...]string{"loopback", "link-local", "private", "public", "invalid"}
)

// String returns the scope's name as error messages show it: "loopback",
// "link-local", "private", "public" or "invalid".
func (s Scope) String() string {
	if int(s) < len(names) {
		return names[s]
	}
	return "invalid"
}

// Of returns the scope of a; an IPv4-mapped IPv6 address has its IPv4
// address's scope.
func Of(a netip.Addr) Scope {
	a = a.Unmap()
	switch {
	case !a.IsValid(), a.IsUnspecified(), a.IsMulticast(), a == broadcast, a.Is4() && thisNetwork.Contains(a):
		return Invalid
	case a.IsLoopback():
		return Loopback
	case a.IsLinkLocalUnicast():
		return LinkLocal
	case a.IsPrivate(), sharedSpace.Contains(a):
		return Private
	}
	return Public
}

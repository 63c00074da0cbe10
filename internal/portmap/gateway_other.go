//go:build !linux

package portmap

import (
	"errors"
	"net/netip"
)

// defaultGateway is not implemented on this system: Config.Gateway must be
// set.
func defaultGateway() (netip.Addr, error) {
	return netip.Addr{}, errors.New("reading the default gateway is not supported on this system; set Config.Gateway")
}

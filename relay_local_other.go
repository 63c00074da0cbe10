//go:build !linux

package quicpipe

import (
	"net"
	"net/netip"
)

// addrReader reads the host's interface addresses.
type addrReader struct{}

func newAddrReader() (*addrReader, error) { return &addrReader{}, nil }

func (a *addrReader) read() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	addrs := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			addrs = append(addrs, p.Addr().Unmap().WithZone(""))
		}
	}
	return addrs, nil
}

func (a *addrReader) close() error { return nil }

//go:build quicpipe_noupnp

package portmap

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// errNoUPnP: this build left UPnP out (build tag quicpipe_noupnp).
var errNoUPnP = errors.New("UPnP left out of this build (tag quicpipe_noupnp)")

// upnpMapper, in a build without UPnP, never finds a gateway.
type upnpMapper struct{}

func newUPnPMapper(*Client, netip.Addr) *upnpMapper { return &upnpMapper{} }

func (*upnpMapper) probe(context.Context) error { return errNoUPnP }

func (*upnpMapper) mapPort(context.Context, time.Duration) (netip.AddrPort, time.Duration, error) {
	return netip.AddrPort{}, 0, errNoUPnP
}

func (*upnpMapper) unmap(context.Context) error { return nil }

func (*upnpMapper) close() {}

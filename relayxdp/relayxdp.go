// Package relayxdp gives a Quicpipe relay the XDP fast path of package xdp:
// set RelayConfig.FastPath to New's result. It is a package of its own so
// that programs that never run a relay do not link the eBPF loader.
package relayxdp

import (
	"fmt"

	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/xdp"
)

// Config configures the relay's XDP program.
type Config struct {
	// Interface is the network interface the peers' packets arrive on,
	// for example "eth0" (or "lo" to try it locally). Required.
	Interface string
	// Mode is how to attach; the zero value tries native mode, then generic.
	Mode xdp.Mode
	// MapSize is the capacity of the program's CID map, of its set of
	// allowed sources, and the number of registrations it caps with a rate
	// bucket of their own (further ones are forwarded in userspace). If
	// zero, xdp.DefaultMapSize is used.
	MapSize int
}

// New returns a function for RelayConfig.FastPath that attaches the XDP
// program to c.Interface for the relay's port, with the relay's rate caps
// (Linux; it needs CAP_BPF and CAP_NET_ADMIN, or root).
func New(c Config) func(quicpipe.FastPathConfig) (quicpipe.FastPath, error) {
	return func(fc quicpipe.FastPathConfig) (quicpipe.FastPath, error) {
		prog, err := xdp.Attach(ProgramConfig(c, fc))
		if err != nil {
			return nil, fmt.Errorf("quicpipe: XDP on %s: %w", c.Interface, err)
		}
		fc.Logger.Info("XDP fast path active", "interface", c.Interface, "mode", prog.Mode().String())
		return prog, nil
	}
}

// ProgramConfig returns the xdp.Config that New attaches with.
func ProgramConfig(c Config, fc quicpipe.FastPathConfig) xdp.Config {
	rate := func(v int64) int64 { return min(max(v, 0), xdp.MaxRate) }
	buckets := c.MapSize
	if buckets == 0 {
		buckets = xdp.DefaultMapSize
	}
	return xdp.Config{
		Interface: c.Interface,
		Ports:     []uint16{fc.Port},
		Mode:      c.Mode,
		MapSize:   c.MapSize,
		// The program applies the relay's forwarding rule and rate caps
		// itself: what it passes up, userspace decides on.
		FilterSources:            true,
		Buckets:                  buckets,
		MaxPacketsPerSecond:      rate(fc.MaxPacketsPerSecond),
		MaxBytesPerSecond:        rate(fc.MaxBytesPerSecond),
		MaxTotalPacketsPerSecond: rate(fc.MaxTotalPacketsPerSecond),
		MaxTotalBytesPerSecond:   rate(fc.MaxTotalBytesPerSecond),
	}
}

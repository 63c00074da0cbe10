package relayxdp

import (
	"log/slog"
	"slices"
	"testing"

	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/xdp"
)

// TestProgramConfig: the program gets the relay's port and rate caps,
// clamped to what it can enforce, filters sources, and has one rate bucket
// per map entry.
func TestProgramConfig(t *testing.T) {
	c := ProgramConfig(Config{Interface: "eth0", Mode: xdp.ModeGeneric}, quicpipe.FastPathConfig{
		Port:                     4433,
		MaxPacketsPerSecond:      100000,
		MaxBytesPerSecond:        1 << 40,
		MaxTotalPacketsPerSecond: -1,
		Logger:                   slog.New(slog.DiscardHandler),
	})
	if c.Interface != "eth0" || c.Mode != xdp.ModeGeneric || !slices.Equal(c.Ports, []uint16{4433}) || !c.FilterSources {
		t.Errorf("got %+v, want eth0, generic, port 4433, filtering sources", c)
	}
	if c.MapSize != 0 || c.Buckets != xdp.DefaultMapSize {
		t.Errorf("MapSize %d, Buckets %d; want 0 (the default) and %d", c.MapSize, c.Buckets, xdp.DefaultMapSize)
	}
	if c.MaxPacketsPerSecond != 100000 || c.MaxBytesPerSecond != xdp.MaxRate ||
		c.MaxTotalPacketsPerSecond != 0 || c.MaxTotalBytesPerSecond != 0 {
		t.Errorf("rates %d %d %d %d; want 100000, MaxRate, 0, 0", c.MaxPacketsPerSecond, c.MaxBytesPerSecond,
			c.MaxTotalPacketsPerSecond, c.MaxTotalBytesPerSecond)
	}
	if c := ProgramConfig(Config{MapSize: 1000}, quicpipe.FastPathConfig{}); c.MapSize != 1000 || c.Buckets != 1000 {
		t.Errorf("MapSize 1000: got MapSize %d, Buckets %d", c.MapSize, c.Buckets)
	}
}

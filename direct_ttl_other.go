//go:build !linux

package quicpipe

import "net"

// ttlOOB returns nil: low-TTL probes are sent only on Linux; elsewhere the
// first probes go out with the default TTL.
func ttlOOB(*net.UDPConn, bool, int) []byte { return nil }

//go:build !linux

package quicpipe

// gsoSegmentSize returns 0: GSO exists only on Linux.
func gsoSegmentSize([]byte) int { return 0 }

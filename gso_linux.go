package quicpipe

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// gsoSegmentSize returns the UDP_SEGMENT size in a control message, or 0.
func gsoSegmentSize(oob []byte) int {
	for len(oob) >= unix.CmsgSpace(0) {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_SEGMENT && len(data) >= 2 {
			return int(binary.NativeEndian.Uint16(data))
		}
		oob = rest
	}
	return 0
}

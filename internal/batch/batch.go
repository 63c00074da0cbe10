// Package batch holds what the relay's forwarding engine and the peer's
// socket share in handing quic-go batches of datagrams: the pass-through
// socket both wrap (Socket), and moving a kept datagram within a batch
// (Move).
package batch

import "golang.org/x/net/ipv4"

// Move copies the datagram of ms[from] into ms[to]: its bytes and control
// data into ms[to]'s own buffers, its length, flags and source address.
//
// quic-go pairs each message slot it passes to ReadBatch with its own
// buffer, so a reader that keeps only some datagrams of a batch for quic-go
// (the relay forwards the others, the peer takes its control datagrams out)
// moves the kept ones down into the lowest slots by copying, never by
// swapping buffers. Moving a slot onto itself leaves it as it is.
func Move(ms []ipv4.Message, to, from int) {
	if to == from {
		return
	}
	dst, src := &ms[to], &ms[from]
	dst.N = copy(dst.Buffers[0], src.Buffers[0][:src.N])
	dst.NN = copy(dst.OOB, src.OOB[:src.NN])
	dst.Flags = src.Flags
	dst.Addr = src.Addr
}

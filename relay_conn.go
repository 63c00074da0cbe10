package quicpipe

import "golang.org/x/net/ipv4"

// relayConn is the relay's socket as quic-go sees it. It implements
// quic.OOBCapablePacketConn and ReadBatch, so quic-go keeps batched reads,
// ECN and GSO, and reads through relayConn.ReadBatch. There, every datagram
// whose destination CID is registered is forwarded at once (one sendmmsg per
// batch on Linux, runs for one destination as UDP GSO messages) and only the
// rest is returned to quic-go's HTTP/3 server.
//
// quic-go pairs messages[i] with its own buffer i, so ReadBatch never
// reorders messages or swaps their buffers: forwarded datagrams are sent
// first, then the datagrams for quic-go are copied down into the lowest slots.
type relayConn struct {
	udpSocket // the socket, owned by the Relay's caller or the Relay; see Relay
	relay     *Relay
	io        batchIO
}

func (c *relayConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	for {
		n, err := c.io.read(ms, flags)
		if err != nil {
			return 0, err
		}
		if k := c.relay.route(ms[:n], &c.io); k > 0 {
			return k, nil
		}
	}
}

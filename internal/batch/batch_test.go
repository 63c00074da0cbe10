package batch

import (
	"net"
	"testing"

	"golang.org/x/net/ipv4"
)

func TestMove(t *testing.T) {
	ms := make([]ipv4.Message, 3)
	bufs := make([][]byte, 3)
	for i := range ms {
		bufs[i] = make([]byte, 16)
		ms[i].Buffers = [][]byte{bufs[i]}
		ms[i].OOB = make([]byte, 8)
	}
	from := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 9}
	ms[2].N = copy(ms[2].Buffers[0], "datagram")
	ms[2].NN = copy(ms[2].OOB, "oob")
	ms[2].Flags = 7
	ms[2].Addr = from
	Move(ms, 0, 2)
	if got := string(ms[0].Buffers[0][:ms[0].N]); got != "datagram" {
		t.Errorf("moved datagram %q", got)
	}
	if got := string(ms[0].OOB[:ms[0].NN]); got != "oob" || ms[0].Flags != 7 || ms[0].Addr != from {
		t.Errorf("moved oob %q flags %d addr %v", got, ms[0].Flags, ms[0].Addr)
	}
	if &ms[0].Buffers[0][0] != &bufs[0][0] {
		t.Error("Move swapped buffers: slot 0 no longer holds its own")
	}
	ms[1].N = copy(ms[1].Buffers[0], "stay")
	Move(ms, 1, 1)
	if got := string(ms[1].Buffers[0][:ms[1].N]); got != "stay" {
		t.Errorf("self-move changed the datagram to %q", got)
	}
	if n := testing.AllocsPerRun(100, func() { Move(ms, 0, 2) }); n != 0 {
		t.Errorf("Move allocates %v times", n)
	}
}

package netlab

import (
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// xdpPass is XDP_PASS.
const xdpPass = 2

// NewXDPPassProgram loads an XDP program that passes every frame. The caller
// closes it.
func NewXDPPassProgram() (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()},
	})
}

// AttachXDPPass attaches, in native mode, a program that passes every frame
// to interface dev of the namespace, until the test ends: a veth transmits
// XDP_TX frames only to a peer that runs XDP itself. It fails the test
// where BPF programs cannot be loaded: check that first.
func (n *NS) AttachXDPPass(dev string) {
	t := n.lab.t
	t.Helper()
	prog, err := NewXDPPassProgram()
	if err != nil {
		t.Fatalf("netlab: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	var l link.Link
	err = n.Do(func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifi.Index, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		t.Fatalf("netlab: attaching XDP to %s in %s: %v", dev, n.Name, err)
	}
	t.Cleanup(func() { l.Close() })
}

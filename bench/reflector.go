package main

// Two tiny XDP programs, assembled here with cilium/ebpf's asm package (no
// C compiler needed):
//
//   - pass: returns XDP_PASS. Native XDP on a veth transmits nothing unless
//     the peer end runs a program too (xdp/README.md), so every native-mode
//     case attaches it to the router's end of the relay's link.
//   - reflector: the physical limit of this setup. For IPv4/UDP frames to
//     one port it swaps the MAC addresses, writes fixed source and
//     destination addresses and ports (relay → sink), recomputes the IPv4
//     header checksum, patches the UDP checksum incrementally if there is
//     one, and returns XDP_TX. No parsing of QUIC, no map lookup, no TTL.

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

func init() { roles["xdpprog"] = xdpProgRole }

const (
	xdpPass = 2
	xdpTX   = 3
)

// le16 and le32 give the value a little-endian load returns for bytes in
// network order, so that the program compares and stores without swapping.
func le16(v uint16) int64 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return int64(binary.LittleEndian.Uint16(b[:]))
}

func le32(a netip.Addr) int64 {
	b := a.As4()
	return int64(binary.LittleEndian.Uint32(b[:]))
}

func passProgram() asm.Instructions {
	return asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()}
}

// reflectorProgram reflects UDP datagrams sent from `from` to `via` so that
// they go from `via` to `to`.
func reflectorProgram(from, via, to netip.AddrPort) asm.Instructions {
	// The UDP checksum covers the pseudo-header: its change is the sum of
	// the changed 16-bit words (RFC 1624, eqn. 3), computed here once and
	// in the byte order of the program's loads.
	words := func(ap netip.AddrPort) []uint32 {
		a := ap.Addr().As4()
		var p [2]byte
		binary.BigEndian.PutUint16(p[:], ap.Port())
		return []uint32{uint32(binary.LittleEndian.Uint16(a[0:2])), uint32(binary.LittleEndian.Uint16(a[2:4])),
			uint32(binary.LittleEndian.Uint16(p[:]))}
	}
	var delta uint32
	for _, w := range append(words(from), words(via)...) { // old: src, dst
		delta += ^w & 0xffff
	}
	for _, w := range append(words(via), words(to)...) { // new: src, dst
		delta += w
	}
	for delta>>16 != 0 {
		delta = delta&0xffff + delta>>16
	}
	const (
		data = asm.R2
		end  = asm.R3
		tmp  = asm.R4
		v    = asm.R5
		sum  = asm.R0
	)
	insns := asm.Instructions{
		asm.LoadMem(data, asm.R1, 0, asm.Word),
		asm.LoadMem(end, asm.R1, 4, asm.Word),
		asm.Mov.Reg(tmp, data),
		asm.Add.Imm(tmp, 42), // Ethernet 14 + IPv4 20 + UDP 8
		asm.JGT.Reg(tmp, end, "pass"),
		asm.LoadMem(v, data, 12, asm.Half),
		asm.JNE.Imm(v, int32(le16(0x0800)), "pass"), // IPv4
		asm.LoadMem(v, data, 14, asm.Byte),
		asm.JNE.Imm(v, 0x45, "pass"), // no options
		asm.LoadMem(v, data, 23, asm.Byte),
		asm.JNE.Imm(v, 17, "pass"), // UDP
		asm.LoadMem(v, data, 36, asm.Half),
		asm.JNE.Imm(v, int32(le16(via.Port())), "pass"),
		// Swap the MAC addresses.
		asm.LoadMem(asm.R6, data, 0, asm.Word),
		asm.LoadMem(asm.R7, data, 4, asm.Half),
		asm.LoadMem(asm.R8, data, 6, asm.Word),
		asm.LoadMem(asm.R9, data, 10, asm.Half),
		asm.StoreMem(data, 0, asm.R8, asm.Word),
		asm.StoreMem(data, 4, asm.R9, asm.Half),
		asm.StoreMem(data, 6, asm.R6, asm.Word),
		asm.StoreMem(data, 10, asm.R7, asm.Half),
		// Addresses and ports.
		asm.StoreImm(data, 26, le32(via.Addr()), asm.Word),
		asm.StoreImm(data, 30, le32(to.Addr()), asm.Word),
		asm.StoreImm(data, 34, le16(via.Port()), asm.Half),
		asm.StoreImm(data, 36, le16(to.Port()), asm.Half),
		// IPv4 header checksum from scratch.
		asm.StoreImm(data, 24, 0, asm.Half),
		asm.Mov.Imm(sum, 0),
	}
	for off := int16(14); off < 34; off += 2 {
		insns = append(insns, asm.LoadMem(v, data, off, asm.Half), asm.Add.Reg(sum, v))
	}
	fold := func(r asm.Register) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(tmp, r), asm.RSh.Imm(tmp, 16), asm.And.Imm(r, 0xffff), asm.Add.Reg(r, tmp),
			asm.Mov.Reg(tmp, r), asm.RSh.Imm(tmp, 16), asm.And.Imm(r, 0xffff), asm.Add.Reg(r, tmp),
		}
	}
	insns = append(insns, fold(sum)...)
	insns = append(insns,
		asm.Xor.Imm(sum, 0xffff),
		asm.StoreMem(data, 24, sum, asm.Half),
		// UDP checksum: zero means none (IPv4); otherwise patch it.
		asm.LoadMem(v, data, 40, asm.Half),
		asm.JEq.Imm(v, 0, "tx"),
		asm.Xor.Imm(v, 0xffff),
		asm.Add.Imm(v, int32(delta)),
	)
	insns = append(insns, fold(v)...)
	insns = append(insns,
		asm.Xor.Imm(v, 0xffff),
		asm.JNE.Imm(v, 0, "store"),
		asm.Mov.Imm(v, 0xffff),
		asm.StoreMem(data, 40, v, asm.Half).WithSymbol("store"),
		asm.Mov.Imm(asm.R0, xdpTX).WithSymbol("tx"),
		asm.Return(),
		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
		asm.Return(),
	)
	return insns
}

func loadXDP(name string, insns asm.Instructions) (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         name,
		Type:         ebpf.XDP,
		Instructions: insns,
		License:      "Dual MIT/GPL",
	})
}

// xdpProgRole attaches the pass program or the reflector to an interface
// until its standard input closes.
func xdpProgRole(args []string) error {
	fs := flag.NewFlagSet("xdpprog", flag.ContinueOnError)
	kind := fs.String("kind", "pass", "pass or reflector")
	iface := fs.String("iface", "", "interface")
	mode := fs.String("mode", "native", "native or generic")
	from := fs.String("from", "", "reflector: sender address:port")
	via := fs.String("via", "", "reflector: this host's address:port")
	to := fs.String("to", "", "reflector: destination address:port")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var insns asm.Instructions
	switch *kind {
	case "pass":
		insns = passProgram()
	case "reflector":
		f, err1 := netip.ParseAddrPort(*from)
		v, err2 := netip.ParseAddrPort(*via)
		t, err3 := netip.ParseAddrPort(*to)
		if err1 != nil || err2 != nil || err3 != nil {
			return fmt.Errorf("reflector needs -from, -via and -to")
		}
		insns = reflectorProgram(f, v, t)
	default:
		return fmt.Errorf("unknown kind %q", *kind)
	}
	prog, err := loadXDP("qpb_"+*kind, insns)
	if err != nil {
		return fmt.Errorf("load %s: %w", *kind, err)
	}
	defer prog.Close()
	ifc, err := net.InterfaceByName(*iface)
	if err != nil {
		return err
	}
	flags := link.XDPDriverMode
	if *mode == "generic" {
		flags = link.XDPGenericMode
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index, Flags: flags})
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", *kind, *iface, err)
	}
	defer l.Close()
	say("ready", nil)
	serveCommands(func(string, []string) (any, error) { return nil, nil })
	return nil
}

//go:build linux

package xdp

import (
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Regenerating needs clang, llvm-strip and nothing else: the libbpf headers
// are vendored under include/ (see README.md).
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel,bpfeb -tags linux -type config -type dest -type src_key -type bucket -type stat -type outcome quicpipe quicpipe.c -- -I./include

// The Go constants must match quicpipe.c: these fail to compile otherwise.
var (
	_ [0]struct{} = [Outcome(quicpipeOutcomeOUTCOME_LEN) - NumOutcomes]struct{}{}
	_ [0]struct{} = [len(quicpipeConfig{}.Ports) - MaxPorts]struct{}{}
)

// kernel holds the objects a Program owns in the kernel.
type kernel struct {
	objs quicpipeObjects
	link link.Link // nil unless attached
}

// verifierError carries the verifier's whole log in its message.
type verifierError struct{ ve *ebpf.VerifierError }

func (e *verifierError) Error() string { return fmt.Sprintf("%+v", e.ve) }
func (e *verifierError) Unwrap() error { return e.ve }

func load(c Config) (*Program, error) {
	spec, err := loadQuicpipe()
	if err != nil {
		return nil, fmt.Errorf("xdp: %w", err)
	}
	return loadSpec(spec, c)
}

// loadSpec loads spec, the embedded program or a test's variant of it.
func loadSpec(spec *ebpf.CollectionSpec, c Config) (*Program, error) {
	spec.Maps[quicpipeMapCidMap].MaxEntries = uint32(c.MapSize)
	spec.Maps[quicpipeMapSrcMap].MaxEntries = uint32(c.MapSize)
	spec.Maps[quicpipeMapBucketMap].MaxEntries = uint32(c.Buckets) + 1
	p := &Program{buckets: uint32(c.Buckets)}
	if err := spec.LoadAndAssign(&p.k.objs, nil); err != nil {
		if ve, ok := errors.AsType[*ebpf.VerifierError](err); ok {
			err = &verifierError{ve}
		}
		return nil, fmt.Errorf("xdp: load: %w", err)
	}
	cfg := quicpipeConfig{
		NumPorts: uint32(len(c.Ports)),
		RegPps:   uint64(c.MaxPacketsPerSecond), RegBps: uint64(c.MaxBytesPerSecond),
		TotalPps: uint64(c.MaxTotalPacketsPerSecond), TotalBps: uint64(c.MaxTotalBytesPerSecond),
	}
	if c.FilterSources {
		cfg.Flags |= configFilterSources
	}
	copy(cfg.Ports[:], c.Ports)
	if err := p.k.objs.ConfigMap.Put(uint32(0), &cfg); err != nil {
		p.k.objs.Close()
		return nil, fmt.Errorf("xdp: writing the config map: %w", err)
	}
	return p, nil
}

func (p *Program) attach(c Config) error {
	ifi, err := net.InterfaceByName(c.Interface)
	if err != nil {
		return fmt.Errorf("xdp: %w", err)
	}
	modes := []Mode{c.Mode}
	if c.Mode == ModeAuto {
		modes = []Mode{ModeNative, ModeGeneric}
	}
	var errs []error
	for _, m := range modes {
		flags := link.XDPDriverMode
		if m == ModeGeneric {
			flags = link.XDPGenericMode
		}
		l, err := link.AttachXDP(link.XDPOptions{
			Program:   p.k.objs.QuicpipeXdp,
			Interface: ifi.Index,
			Flags:     flags,
		})
		if err == nil {
			p.k.link, p.mode = l, m
			return nil
		}
		errs = append(errs, fmt.Errorf("%v mode: %w", m, err))
	}
	return fmt.Errorf("xdp: attaching to %s: %w", c.Interface, errors.Join(errs...))
}

func (p *Program) close() error {
	var errs []error
	if p.k.link != nil {
		errs = append(errs, p.k.link.Close())
	}
	errs = append(errs, p.k.objs.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("xdp: close: %w", err)
	}
	return nil
}

func (p *Program) put(cid [CIDLen]byte, e *entry) error {
	v := quicpipeDest{
		DstAddr: e.dst,
		SrcAddr: e.src,
		DstPort: e.dstPort,
		SrcPort: e.srcPort,
		Family:  e.family,
		Flags:   e.flags,
		Bucket:  e.bucket,
	}
	if err := p.k.objs.CidMap.Put(&cid, &v); err != nil {
		return fmt.Errorf("xdp: put: %w", err)
	}
	return nil
}

// configFilterSources is CONFIG_FILTER_SOURCES in quicpipe.c.
const configFilterSources = 1

func (p *Program) resetBucket(bucket uint32) error {
	if err := p.k.objs.BucketMap.Put(bucket, &quicpipeBucket{}); err != nil {
		return fmt.Errorf("xdp: reset bucket: %w", err)
	}
	return nil
}

func (p *Program) allowSource(k [18]byte) error {
	v := quicpipeSrcKey{Port: [2]uint8(k[16:])}
	copy(v.Addr[:], k[:16])
	if err := p.k.objs.SrcMap.Put(&v, uint8(1)); err != nil {
		return fmt.Errorf("xdp: allow source: %w", err)
	}
	return nil
}

func (p *Program) removeSource(k [18]byte) error {
	v := quicpipeSrcKey{Port: [2]uint8(k[16:])}
	copy(v.Addr[:], k[:16])
	err := p.k.objs.SrcMap.Delete(&v)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("xdp: remove source: %w", err)
	}
	return nil
}

func (p *Program) delete(cid [CIDLen]byte) error {
	err := p.k.objs.CidMap.Delete(&cid)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("xdp: delete: %w", err)
	}
	return nil
}

func (p *Program) counters() (Counters, error) {
	var c Counters
	var perCPU []quicpipeStat
	for o := range c {
		if err := p.k.objs.CounterMap.Lookup(quicpipeOutcome(o), &perCPU); err != nil {
			return Counters{}, fmt.Errorf("xdp: reading counter %v: %w", Outcome(o), err)
		}
		for _, s := range perCPU {
			c[o].Packets += s.Packets
			c[o].Bytes += s.Bytes
		}
	}
	return c, nil
}

// runPad is room for the kernel to write more than it was given; this
// program never grows a frame.
const runPad = 256

func (p *Program) run(frame []byte) (uint32, []byte, error) {
	opts := ebpf.RunOptions{
		Data:    frame,
		DataOut: make([]byte, len(frame)+runPad),
		Repeat:  1,
	}
	action, err := p.k.objs.QuicpipeXdp.Run(&opts)
	if err != nil {
		return 0, nil, fmt.Errorf("xdp: run: %w", err)
	}
	return action, opts.DataOut, nil
}

// Package xdp is Quicpipe's XDP fast path: an eBPF program that forwards
// relayed QUIC packets inside the kernel, at the network driver, and its
// loader.
//
// The program (quicpipe.c) looks at UDP datagrams sent to the relay's ports.
// When a datagram's QUIC destination connection ID is in the program's map,
// it rewrites the IP and UDP headers so that the datagram goes from the relay
// to the registered peer, swaps the Ethernet addresses and transmits the
// frame back out of the interface it arrived on (XDP_TX), all without waking
// userspace. Everything else is passed to the kernel's stack unchanged, so
// the userspace relay stays authoritative: the map is only a cache of its
// registrations, and a frame the program cannot handle is never lost. The
// program never drops a frame.
//
// The program assumes that every peer is reached through the neighbour each
// packet came from (the relay's gateway): it answers to the source MAC
// address. See README.md for the rules, the counters and the requirements.
//
// The package builds on every OS; outside Linux, Load and Attach return
// ErrNotSupported.
package xdp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
)

// CIDLen is the length of the connection IDs the program forwards.
const CIDLen = 12

// MaxPorts is the largest number of ports a Config may list.
const MaxPorts = 8

// DefaultMapSize is the capacity of the CID map when Config.MapSize is zero.
const DefaultMapSize = 1 << 16

// maxMapSize bounds Config.MapSize: about 100 bytes of kernel memory per
// entry.
const maxMapSize = 1 << 24

// ErrNotSupported is returned by Load and Attach on systems without XDP.
var ErrNotSupported = errors.New("xdp: not supported on this OS")

// errClosed is returned by a closed Program's methods.
var errClosed = fmt.Errorf("xdp: program closed: %w", net.ErrClosed)

// Mode is how the program is attached to an interface.
type Mode int

const (
	// ModeAuto tries ModeNative, then ModeGeneric if the driver refuses.
	ModeAuto Mode = iota
	// ModeNative runs the program in the network driver (XDP_FLAGS_DRV_MODE).
	ModeNative
	// ModeGeneric runs the program on socket buffers, after the driver
	// (XDP_FLAGS_SKB_MODE). It works on every interface and is slower.
	ModeGeneric
)

// String returns "auto", "native" or "generic".
func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeNative:
		return "native"
	case ModeGeneric:
		return "generic"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Config configures Load and Attach. A Program never modifies the Config it
// is given.
type Config struct {
	// Interface is the name of the network interface to attach to, for
	// example "eth0". Attach requires it; Load ignores it.
	Interface string
	// Ports are the relay's UDP ports: only datagrams to one of them are
	// considered. At most MaxPorts, none of them zero. If empty, the program
	// forwards nothing and passes every frame.
	Ports []uint16
	// Mode selects how Attach attaches the program. The zero value is
	// ModeAuto.
	Mode Mode
	// MapSize is the capacity of the CID map, a least-recently-used hash:
	// when it is full, inserting a CID evicts the one unused for longest,
	// whose packets then go to userspace. It is also the capacity of the
	// source set (see FilterSources). If zero, DefaultMapSize is used.
	MapSize int
	// FilterSources makes the program forward only datagrams whose source
	// address and port were allowed with AllowSource; the others go to
	// userspace (PassUnknownSource). If false, any source is forwarded.
	FilterSources bool
	// Buckets is the number of rate buckets, numbered 1 to Buckets, that
	// PutBucket may name. If zero, DefaultMapSize is used.
	Buckets int
	// MaxPacketsPerSecond and MaxBytesPerSecond cap what the program
	// forwards for the CIDs of one bucket (token buckets with a
	// one-second burst); MaxTotalPacketsPerSecond and
	// MaxTotalBytesPerSecond cap what it forwards in total. Frames over a
	// cap are dropped (DropRateLimit). Zero or negative means unlimited;
	// values above MaxRate are refused.
	MaxPacketsPerSecond, MaxBytesPerSecond           int64
	MaxTotalPacketsPerSecond, MaxTotalBytesPerSecond int64
}

// MaxRate is the highest rate the program can enforce, per second.
const MaxRate = 1 << 33

// populate validates c and fills in defaults, without changing c.
func (c Config) populate(attach bool) (Config, error) {
	if attach && c.Interface == "" {
		return c, errors.New("xdp: Config.Interface is empty")
	}
	if len(c.Ports) > MaxPorts {
		return c, fmt.Errorf("xdp: %d ports configured, at most %d allowed", len(c.Ports), MaxPorts)
	}
	for _, p := range c.Ports {
		if p == 0 {
			return c, errors.New("xdp: port 0 in Config.Ports")
		}
	}
	c.Ports = append([]uint16(nil), c.Ports...)
	switch c.Mode {
	case ModeAuto, ModeNative, ModeGeneric:
	default:
		return c, fmt.Errorf("xdp: unknown %v", c.Mode)
	}
	if c.MapSize == 0 {
		c.MapSize = DefaultMapSize
	}
	if c.MapSize < 1 || c.MapSize > maxMapSize {
		return c, fmt.Errorf("xdp: Config.MapSize %d is outside 1 to %d", c.MapSize, maxMapSize)
	}
	if c.Buckets == 0 {
		c.Buckets = DefaultMapSize
	}
	if c.Buckets < 1 || c.Buckets > maxMapSize {
		return c, fmt.Errorf("xdp: Config.Buckets %d is outside 1 to %d", c.Buckets, maxMapSize)
	}
	for _, r := range []*int64{&c.MaxPacketsPerSecond, &c.MaxBytesPerSecond, &c.MaxTotalPacketsPerSecond, &c.MaxTotalBytesPerSecond} {
		if *r > MaxRate {
			return c, fmt.Errorf("xdp: rate %d per second is above MaxRate", *r)
		}
		*r = max(*r, 0)
	}
	return c, nil
}

// XDP actions, as returned by Program.Run.
const (
	ActionAborted  uint32 = 0
	ActionDrop     uint32 = 1
	ActionPass     uint32 = 2
	ActionTX       uint32 = 3
	ActionRedirect uint32 = 4
)

// Outcome is what the program did with a frame, and why. The values mirror
// enum outcome in quicpipe.c.
type Outcome uint32

// The outcomes. The first two are XDP_TX; all others are XDP_PASS.
const (
	ForwardedIPv4      Outcome = iota // forwarded over IPv4
	ForwardedIPv6                     // forwarded over IPv6
	PassNotIP                         // EtherType neither IPv4 nor IPv6 (ARP, ...)
	PassVLAN                          // 802.1Q or 802.1ad tagged frame
	PassMulticast                     // group (multicast or broadcast) destination MAC
	PassMalformed                     // truncated; bad IP version or lengths; bad IPv4 header checksum; zero UDP checksum over IPv6
	PassNotUDP                        // another transport protocol
	PassIPOptions                     // IPv4 header with options
	PassFragment                      // IPv4 fragment
	PassIPv6Ext                       // IPv6 extension header before UDP
	PassWrongPort                     // UDP to a port not in Config.Ports
	PassShort                         // UDP payload too short to hold a 12-byte DCID
	PassDCIDLen                       // long header whose DCID length is not 12
	PassRelayCID                      // DCID with the high bit set: the relay's own
	PassMiss                          // DCID not in the map
	PassFamilyMismatch                // entry and packet differ in IP version
	PassTTL                           // TTL or hop limit of 1 or 0
	PassUnknownSource                 // source not allowed (Config.FilterSources)
	PassRelaySCID                     // long header whose source CID is a relay's
	DropRateLimit                     // over a rate cap (Config.Max*PerSecond): XDP_DROP

	// NumOutcomes is the number of outcomes.
	NumOutcomes = iota
)

var outcomeNames = [NumOutcomes]string{
	"forwarded_ipv4", "forwarded_ipv6",
	"not_ip", "vlan", "multicast", "malformed", "not_udp", "ip_options",
	"fragment", "ipv6_ext", "wrong_port", "short", "dcid_len", "relay_cid",
	"miss", "family_mismatch", "ttl", "unknown_source", "relay_scid", "rate_limit",
}

// String returns the outcome's name in snake case, for example "miss".
func (o Outcome) String() string {
	if o < NumOutcomes {
		return outcomeNames[o]
	}
	return fmt.Sprintf("Outcome(%d)", uint32(o))
}

// Forwarded reports whether o is an XDP_TX outcome.
func (o Outcome) Forwarded() bool { return o <= ForwardedIPv6 }

// Dropped reports whether o is an XDP_DROP outcome.
func (o Outcome) Dropped() bool { return o == DropRateLimit }

// Stat counts frames and their bytes (whole frames, Ethernet header
// included).
type Stat struct {
	Packets, Bytes uint64
}

// Counters are the program's counters since it was loaded, summed over CPUs
// and indexed by Outcome.
type Counters [NumOutcomes]Stat

// Forwarded sums the forwarded outcomes.
func (c *Counters) Forwarded() Stat { return c.sum(Outcome.Forwarded) }

// Passed sums the outcomes passed to the kernel's stack.
func (c *Counters) Passed() Stat {
	return c.sum(func(o Outcome) bool { return !o.Forwarded() && !o.Dropped() })
}

// Dropped sums the dropped outcomes.
func (c *Counters) Dropped() Stat { return c.sum(Outcome.Dropped) }

func (c *Counters) sum(match func(Outcome) bool) Stat {
	var s Stat
	for o, v := range c {
		if match(Outcome(o)) {
			s.Packets += v.Packets
			s.Bytes += v.Bytes
		}
	}
	return s
}

// Map returns the counters by outcome name, for metrics export.
func (c *Counters) Map() map[string]Stat {
	m := make(map[string]Stat, NumOutcomes)
	for o, v := range c {
		m[Outcome(o).String()] = v
	}
	return m
}

// Program is a loaded XDP program with its maps, attached to an interface
// (Attach) or not (Load). Its methods are safe for concurrent use. The
// program and its maps belong to the process: Close detaches and frees them,
// and so does the process's exit, so a program never outlives its relay.
type Program struct {
	mu      sync.RWMutex
	closed  bool
	mode    Mode   // ModeAuto until attached
	buckets uint32 // Config.Buckets
	k       kernel // per OS: the loaded objects and the link
}

// Load loads the program and its maps into the kernel without attaching
// them to an interface. Use Run to run the program on a frame. Load needs
// CAP_BPF and CAP_NET_ADMIN (or root).
func Load(cfg Config) (*Program, error) {
	c, err := cfg.populate(false)
	if err != nil {
		return nil, err
	}
	return load(c)
}

// Attach loads the program and attaches it to cfg.Interface in cfg.Mode. The
// attachment is a BPF link owned by the process: it goes away on Close or
// when the process exits, never leaving a program on the interface.
func Attach(cfg Config) (*Program, error) {
	c, err := cfg.populate(true)
	if err != nil {
		return nil, err
	}
	p, err := load(c)
	if err != nil {
		return nil, err
	}
	if err := p.attach(c); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// Mode reports how the program is attached: ModeNative or ModeGeneric, or
// ModeAuto if it was loaded without attaching.
func (p *Program) Mode() Mode { return p.mode }

// Close detaches the program and frees it and its maps. It is safe to call
// more than once; later calls return nil.
func (p *Program) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	return p.close()
}

// Put maps cid to a destination: packets whose destination CID is cid are
// sent to dst, from src. Put costs one system call; it is meant for each new
// CID, not each packet. Pass the zero netip.AddrPort as src (or an
// unspecified address, or port 0) to answer from the address (or port) each
// packet was sent to, which is right for a relay with one address per family.
// IPv4-mapped IPv6 addresses are treated as IPv4. A packet whose IP version
// differs from dst's is passed to userspace. Put replaces an existing entry.
func (p *Program) Put(cid [CIDLen]byte, dst, src netip.AddrPort) error {
	return p.PutBucket(cid, dst, src, 0)
}

// PutBucket is Put, with the CID's frames also counted against rate bucket
// bucket (1 to Config.Buckets; 0 for none), which CIDs of one registration
// share.
func (p *Program) PutBucket(cid [CIDLen]byte, dst, src netip.AddrPort, bucket uint32) error {
	e, err := makeEntry(cid, dst, src)
	if err != nil {
		return err
	}
	if bucket > p.buckets {
		return fmt.Errorf("xdp: bucket %d is above Config.Buckets (%d)", bucket, p.buckets)
	}
	e.bucket = bucket
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return errClosed
	}
	return p.put(cid, &e)
}

// ResetBucket refills rate bucket bucket, for a registration that takes it
// over from another.
func (p *Program) ResetBucket(bucket uint32) error {
	if bucket == 0 || bucket > p.buckets {
		return fmt.Errorf("xdp: bucket %d is outside 1 to %d", bucket, p.buckets)
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return errClosed
	}
	return p.resetBucket(bucket)
}

// AllowSource lets the program forward datagrams from src (with
// Config.FilterSources). IPv4-mapped addresses are treated as IPv4.
func (p *Program) AllowSource(src netip.AddrPort) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return errClosed
	}
	return p.allowSource(srcKey(src))
}

// RemoveSource undoes AllowSource. Removing a source that is not there is
// not an error.
func (p *Program) RemoveSource(src netip.AddrPort) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return errClosed
	}
	return p.removeSource(srcKey(src))
}

// srcKey is a source as the program looks it up: the address as 16 bytes
// (IPv4-mapped for IPv4) and the port, in network byte order.
func srcKey(ap netip.AddrPort) (k [18]byte) {
	a := ap.Addr().Unmap().As16()
	copy(k[:16], a[:])
	k[16], k[17] = byte(ap.Port()>>8), byte(ap.Port())
	return k
}

// Delete removes cid from the map. Deleting a CID that is not there is not
// an error.
func (p *Program) Delete(cid [CIDLen]byte) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return errClosed
	}
	return p.delete(cid)
}

// Counters returns the program's counters, summed over CPUs.
func (p *Program) Counters() (Counters, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return Counters{}, errClosed
	}
	return p.counters()
}

// EachCounter calls fn with each outcome's name and counters, summed over
// CPUs, in the order of the outcomes.
func (p *Program) EachCounter(fn func(outcome string, packets, bytes uint64)) error {
	c, err := p.Counters()
	if err != nil {
		return err
	}
	for o, v := range c {
		fn(Outcome(o).String(), v.Packets, v.Bytes)
	}
	return nil
}

// Buckets returns the number of rate buckets (Config.Buckets).
func (p *Program) Buckets() int { return int(p.buckets) }

// Run runs the program once on frame (an Ethernet frame) in the kernel
// without sending anything (BPF_PROG_TEST_RUN), and returns its action
// (ActionPass, ActionTX, ...) and the frame as the program left it. Counters
// and the map are those of the real program. The kernel refuses frames
// shorter than an Ethernet header (14 bytes) with an error.
func (p *Program) Run(frame []byte) (action uint32, out []byte, err error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return 0, nil, errClosed
	}
	return p.run(frame)
}

// entry is a map value, laid out as struct dest in quicpipe.c.
type entry struct {
	dst, src         [16]byte // IPv6 or IPv4-mapped, network byte order
	dstPort, srcPort [2]byte  // network byte order
	family           uint8    // 4 or 6
	flags            uint8
	bucket           uint32
}

// entry flags, as DEST_* in quicpipe.c
const (
	srcAddrFromPacket = 1
	srcPortFromPacket = 2
)

func makeEntry(cid [CIDLen]byte, dst, src netip.AddrPort) (entry, error) {
	var e entry
	if cid[0]&0x80 != 0 {
		return e, errors.New("xdp: a CID with the high bit set is the relay's own")
	}
	da := dst.Addr().Unmap()
	if !da.IsValid() || da.IsUnspecified() || dst.Port() == 0 {
		return e, fmt.Errorf("xdp: invalid destination %v", dst)
	}
	e.dst = da.As16()
	e.dstPort = [2]byte{byte(dst.Port() >> 8), byte(dst.Port())}
	e.family = 6
	if da.Is4() {
		e.family = 4
	}
	sa := src.Addr().Unmap()
	switch {
	case !sa.IsValid() || sa.IsUnspecified():
		e.flags |= srcAddrFromPacket
	case sa.Is4() != da.Is4():
		return e, fmt.Errorf("xdp: source %v and destination %v differ in IP version", src, dst)
	default:
		e.src = sa.As16()
	}
	if src.Port() == 0 {
		e.flags |= srcPortFromPacket
	} else {
		e.srcPort = [2]byte{byte(src.Port() >> 8), byte(src.Port())}
	}
	return e, nil
}

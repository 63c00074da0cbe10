package main

// Roles around the Quicpipe relay: the relay itself, and a registrar that
// registers a CID window for a sink address through the relay's public API
// (a real quicpipe.Accepter on the sink's socket) and is then killed, so
// that the registration stays without anyone reading the sink's port.

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/relayxdp"
	"github.com/quicpipe/quicpipe/xdp"
)

func init() {
	roles["relay"] = relayRole
	roles["registrar"] = registrarRole
}

// benchSeed makes the relay's and peers' identities reproducible.
func benchKey(name string) ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	copy(seed, "quicpipe bench "+name)
	return ed25519.NewKeyFromSeed(seed)
}

func pub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

type relayStats struct {
	Forwarded  uint64            `json:"forwarded"`
	Dropped    map[string]uint64 `json:"dropped"`
	XDP        map[string]uint64 `json:"xdp,omitempty"`
	Mallocs    uint64            `json:"mallocs"`
	HeapAlloc  uint64            `json:"heap_alloc"`
	CIDs       int               `json:"cids"`
	Regs       int               `json:"registrations"`
	RSS        int64             `json:"rss"`
	XDPMode    string            `json:"xdp_mode,omitempty"`
	Registered uint64            `json:"registered"`
	// StackInuse is the goroutine stacks' memory (runtime.MemStats), which
	// HeapAlloc leaves out; Goroutines their number.
	StackInuse uint64 `json:"stack_inuse"`
	Goroutines int    `json:"goroutines"`
	// Tunnels is the number of tunnels open at the relay
	// (Relay.TunnelStats().Open).
	Tunnels uint64 `json:"tunnels"`
}

func relayRole(args []string) error {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	listen := fs.String("listen", "", "UDP address")
	xdpIf := fs.String("xdp", "", "attach the XDP fast path to this interface")
	xdpMode := fs.String("xdpmode", "native", "native or generic")
	mailbox := fs.Bool("mailbox", false, "turn the mailbox on")
	big := fs.Bool("big", false, "raise the table limits for the memory comparison")
	fleetDir := fs.String("fleet", "", "join a fleet: run an embedded NATS node storing in this directory, and a fleet member on it")
	fleetNATS := fs.String("fleet-nats", memberNATS, "where the embedded NATS node of -fleet listens")
	readers := fs.Int("readers", 0, "RelayConfig.Readers (0: one per CPU the process may use)")
	tunnel := fs.String("tunnel", "", "serve the TLS/WebSocket tunnel on this TCP address (RelayConfig.Tunnel)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := benchRelayConfig(*big)
	cfg.Readers = *readers
	if *mailbox {
		// The per-source posting cap is policy too: a setup run dials from
		// one address many times a second.
		cfg.Mailbox = &quicpipe.MailboxConfig{PostRate: 10000, PostBurst: 10000}
	}
	if *xdpIf != "" {
		m := xdp.ModeNative
		if *xdpMode == "generic" {
			m = xdp.ModeGeneric
		}
		cfg.FastPath = relayxdp.New(relayxdp.Config{Interface: *xdpIf, Mode: m})
	}
	if *tunnel != "" {
		// The tunnel's per-source and total bounds are policy: every
		// bench client shares one address.
		cfg.Tunnel = &quicpipe.TunnelConfig{Addr: *tunnel, MaxTunnels: 1 << 16, MaxTunnelsPerSource: 1 << 16}
	}
	var fm *fleetMembership
	if *fleetDir != "" {
		var err error
		if fm, err = newFleetMembership(*fleetDir, *fleetNATS); err != nil {
			return err
		}
		defer fm.close()
		cfg.Replicator = fm.member
	}
	r, err := quicpipe.ListenRelay(*listen, cfg)
	if err != nil {
		return err
	}
	go r.Serve(context.Background())
	ready := map[string]any{"addr": r.LocalAddr().String(), "key": hex.EncodeToString(pub(cfg.Identity))}
	if fm != nil {
		if err := fm.start(r); err != nil {
			r.Close()
			return err
		}
		ready["nats"] = fm.node.ClientURL()
	}
	if prog, ok := r.FastPath().(*xdp.Program); ok {
		ready["xdp_mode"] = prog.Mode().String()
	}
	say("ready", ready)
	serveCommands(func(cmd string, a []string) (any, error) {
		switch cmd {
		case "stats":
			return snapshotRelay(r, false), nil
		case "heap": // after a full collection
			return snapshotRelay(r, true), nil
		case "applyremote": // N registrations of 64 CIDs of another member, straight into the table
			if len(a) != 1 {
				return nil, fmt.Errorf("usage: applyremote N")
			}
			n, err := strconv.Atoi(a[0])
			if err != nil {
				return nil, err
			}
			return applyRemote(r, n, netip.MustParseAddr("10.77.160.1"))
		case "fleetwait": // until N registrations of other members are applied
			if fm == nil || len(a) != 1 {
				return nil, fmt.Errorf("usage: fleetwait N, in a relay started with -fleet")
			}
			n, err := strconv.Atoi(a[0])
			if err != nil {
				return nil, err
			}
			return fm.waitApplied(r, n, 600*time.Second)
		}
		return nil, fmt.Errorf("unknown command")
	})
	r.Close()
	return nil
}

// benchRelayConfig is the configuration of every Quicpipe relay of the
// harness: policy limits lifted, and with big the table limits raised for
// the memory comparisons.
func benchRelayConfig(big bool) *quicpipe.RelayConfig {
	cfg := &quicpipe.RelayConfig{
		Identity:        benchKey("relay"),
		RegistrationTTL: time.Hour,
		// The per-registration and total forwarding caps are policy, not
		// cost: lift them so that one registration can carry the load.
		MaxPacketsPerSecond:       -1,
		MaxBytesPerSecond:         -1,
		MaxRegistrationsPerSource: 100000,
		// So are the per-source bounds: every bench client shares one
		// address, which a public relay would count as one attacker.
		MaxCIDsPerSource:     1 << 23,
		DerivationsPerSecond: 1 << 30,
		DerivationBurst:      1 << 23,
		MaxConnsPerSource:    100000,
	}
	if big {
		cfg.MaxCIDsPerRegistration = 1 << 21
		cfg.MaxCIDs = 1 << 23
		cfg.MaxRegistrations = 1 << 20
		cfg.MaxRegistrationsPerSource = 1 << 20
		cfg.MaxBodyBytes = 1 << 16
	}
	return cfg
}

func snapshotRelay(r *quicpipe.Relay, gc bool) relayStats {
	if gc {
		runtime.GC()
		debug.FreeOSMemory()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := r.Stats()
	s := relayStats{Forwarded: st.Forwarded, Dropped: st.Dropped, Mallocs: ms.Mallocs,
		HeapAlloc: ms.HeapAlloc, CIDs: st.CIDs, Regs: st.Registrations, Registered: st.Registered,
		StackInuse: ms.StackInuse, Goroutines: runtime.NumGoroutine(), Tunnels: r.TunnelStats().Open}
	if st.XDP != nil {
		s.XDP = map[string]uint64{}
		for k, v := range st.XDP {
			s.XDP[k] = v.Packets
		}
	}
	s.RSS, _ = procRSS(os.Getpid())
	return s
}

// parseRelayFlags adds -relay and -relaykey to fs, parses args and returns the
// relay's address and its decoded key.
func parseRelayFlags(fs *flag.FlagSet, args []string) (string, []byte, error) {
	relay := fs.String("relay", "", "relay address")
	relayKey := fs.String("relaykey", "", "relay public key, hex")
	if err := fs.Parse(args); err != nil {
		return "", nil, err
	}
	rk, err := hex.DecodeString(*relayKey)
	return *relay, rk, err
}

func registrarRole(args []string) error {
	fs := flag.NewFlagSet("registrar", flag.ContinueOnError)
	bind := fs.String("bind", "", "local address whose port receives the forwarded packets")
	cidKey := fs.String("cidkey", "", "CID key, hex")
	relay, rk, err := parseRelayFlags(fs, args)
	if err != nil {
		return err
	}
	key, err := hex.DecodeString(*cidKey)
	if err != nil {
		return err
	}
	ua, err := net.ResolveUDPAddr("udp", *bind)
	if err != nil {
		return err
	}
	conn, err := net.ListenUDP("udp4", ua)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, err := quicpipe.NewAccepter(ctx, &quicpipe.Config{
		RelayAddr:     relay,
		RelayKey:      rk,
		Identity:      benchKey("sink"),
		TrustedPeers:  []ed25519.PublicKey{pub(benchKey("gen"))},
		CIDKey:        key,
		Conn:          conn,
		DisableDirect: true,
	})
	if err != nil {
		return err
	}
	reg := a.Registration()
	say("ready", map[string]any{"registration": fmt.Sprintf("%+v", reg)})
	// Wait to be killed: closing the Accepter would unregister.
	serveCommands(func(string, []string) (any, error) { return nil, nil })
	os.Exit(0)
	return nil
}

package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quicpipe/quicpipe"
	"github.com/quicpipe/quicpipe/fleet"
	"github.com/quicpipe/quicpipe/fleet/natsnode"
	"github.com/quicpipe/quicpipe/relaymetrics"
	"github.com/quicpipe/quicpipe/relayxdp"
	"github.com/quicpipe/quicpipe/xdp"
)

// cmdRelay runs a relay until Ctrl-C.
func cmdRelay(ctx context.Context, e *env) error {
	fs := newFlagSet(e, "relay", "",
		"Runs a relay: it forwards peers' packets by connection ID, without decrypting them,\n"+
			"and delivers dialers' first flights to listeners' mailboxes. It prints its address\n"+
			"and public key on standard output; listeners pass them as -relay and -relay-key.\n")
	listen := fs.String("listen", ":4433", "UDP `address` to listen on")
	identity := fs.String("identity", defaultIdentity("relay"), "identity `file` of the relay (created if missing)")
	metrics := fs.String("metrics", "", "serve Prometheus metrics on this TCP `address` (e.g. 127.0.0.1:9090)")
	tokenSecret := fs.String("token-secret-file", "", "require bearer tokens signed with the secret in this `file` (see quicpipe.NewToken; at least 16 bytes, readable only by its owner)")
	allowPrivate := fs.Bool("allow-private", false, "let peers register private and loopback addresses whatever address they reached the relay at")
	mailbox := fs.Bool("mailbox", true, "serve mailboxes (dials delivered through the relay)")
	xdpIface := fs.String("xdp", "", "forward on this network `interface` with the XDP fast path (Linux, root)")
	xdpMode := fs.String("xdp-mode", "auto", "XDP attach `mode`: auto, native or generic")
	var cfg quicpipe.RelayConfig
	var mcfg quicpipe.MailboxConfig
	fs.DurationVar(&cfg.RegistrationTTL, "ttl", 0, "registration lifetime unless refreshed (0: 60s)")
	fs.IntVar(&cfg.MaxRegistrations, "max-registrations", 0, "registrations in total (0: 100000)")
	fs.IntVar(&cfg.MaxRegistrationsPerSource, "max-per-source", 0, "registrations per source IP (0: 64)")
	fs.IntVar(&cfg.MaxCIDs, "max-cids", 0, "connection IDs in total (0: 4194304)")
	fs.IntVar(&cfg.MaxCIDsPerRegistration, "max-cids-per-registration", 0, "connection IDs per registration (0: 4096)")
	fs.IntVar(&cfg.MaxCIDsPerSource, "max-cids-per-source", 0, "connection IDs per source (IPv4 address or IPv6 /64) (0: 8192)")
	fs.Int64Var(&cfg.MaxBodyBytes, "max-body", 0, "API request body size in bytes (0: 4096)")
	fs.IntVar(&cfg.MaxConnsPerSource, "max-conns-per-source", 0, "HTTP/3 connections per source IP, or IPv6 /64 (0: 64)")
	fs.IntVar(&cfg.MaxHandshakes, "max-handshakes", 0, "HTTP/3 handshakes in progress (0: 2000)")
	fs.IntVar(&cfg.RetryHandshakes, "retry-handshakes", 0, "handshakes in progress from which new connections get a Retry (0: 256, -1: always)")
	fs.Int64Var(&cfg.MaxPacketsPerSecond, "max-pps", 0, "packets per second forwarded to one registration (0: 100000, -1: unlimited)")
	fs.Int64Var(&cfg.MaxBytesPerSecond, "max-bps", 0, "bytes per second forwarded to one registration (0: 125000000, -1: unlimited)")
	fs.Int64Var(&cfg.MaxTotalPacketsPerSecond, "max-total-pps", 0, "packets per second forwarded in total (0: no cap)")
	fs.Int64Var(&cfg.MaxTotalBytesPerSecond, "max-total-bps", 0, "bytes per second forwarded in total (0: no cap)")
	fs.Float64Var(&mcfg.PostRate, "mailbox-rate", 0, "mailbox posts per second per source IP (0: 5)")
	fs.IntVar(&mcfg.PostBurst, "mailbox-burst", 0, "mailbox posts a source IP may make at once (0: 20)")
	fs.IntVar(&mcfg.MaxMailboxes, "max-mailboxes", 0, "mailboxes open at once (0: 100000)")
	fs.IntVar(&mcfg.MaxMailboxesPerSource, "max-mailboxes-per-source", 0, "mailboxes open at once per source (IPv4 address or IPv6 /64) (0: 64)")
	fs.BoolVar(&cfg.DisableSleep, "no-sleep", false, "do not let idle listeners sleep (keep their mailbox without a connection, on keep-alive datagrams)")
	fs.DurationVar(&cfg.SleepKeepAlive, "sleep-keepalive", 0, "how often a sleeping listener sends a keep-alive; three missed and it is forgotten (0: 25s)")
	fs.IntVar(&cfg.MaxSleepers, "max-sleepers", 0, "sleeping listeners in total (0: as -max-registrations)")
	fleetURL := fs.String("fleet", "", "join a relay fleet: share registrations, and hand mailbox posts over, with the other members through the NATS JetStream at this `URL` (comma-separated servers)")
	fleetMember := fs.String("fleet-member", "", "this relay's `id` in the fleet: letters, digits, - and _ (default: random)")
	fleetTTL := fs.Duration("fleet-ttl", 0, "a fleet member that does not renew its liveness for this long is dead (0: 6s)")
	fleetReplicas := fs.Int("fleet-replicas", 0, "copies of the fleet's bucket in a NATS cluster, when this member creates it (0: 1)")
	nodeStore := fs.String("fleet-node", "", "run an embedded NATS node (JetStream) storing its data in this `directory`; -fleet defaults to it")
	nodeListen := fs.String("fleet-node-listen", "127.0.0.1:4222", "`address` the embedded NATS node serves members on")
	nodeCluster := fs.String("fleet-node-cluster", "", "`address` the embedded NATS node routes with the other members' nodes on (empty: it runs alone)")
	nodeRoutes := fs.String("fleet-node-routes", "", "the other members' -fleet-node-cluster `addresses`, comma-separated")
	tunnel := fs.String("tunnel", "", "also listen on this TCP `address` (e.g. :443) for peers whose UDP is blocked: TLS, then a WebSocket tunnel to this relay")
	tunnelURL := fs.String("tunnel-url", "", "the tunnel's public `URL` (wss://host:port/path), announced to peers for their tickets, when a load balancer or proxy serves it elsewhere (default: -tunnel's port on the relay's host)")
	tlsCert := fs.String("tls-cert", "", "the tunnel's TLS certificate `file` (PEM; default: a certificate of the relay's key, which peers pin)")
	tlsKey := fs.String("tls-key", "", "the private key `file` of -tls-cert (PEM)")
	probe := fs.String("probe", "auto", "answer address probes (quicpipe doctor) on these UDP `addresses`, comma-separated; auto: the two ports after -listen's (none if -listen's port is 0, a warning if they are taken); off: none")
	verbose := fs.Bool("v", false, "log everything, not only warnings")
	fs.BoolVar(&e.jsonLogs, "log-json", false, "write logs as JSON, one object a line")
	if err := parseFlags(fs, e); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError(fs, e, "unexpected arguments %q", fs.Args())
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return usageError(fs, e, "-tls-cert and -tls-key go together")
	}
	if *tlsCert != "" && *tunnel == "" {
		return usageError(fs, e, "-tls-cert needs -tunnel")
	}
	if *tunnelURL != "" && *tunnel == "" {
		return usageError(fs, e, "-tunnel-url needs -tunnel")
	}
	if *tunnelURL != "" && !strings.HasPrefix(*tunnelURL, "wss://") {
		return usageError(fs, e, "-tunnel-url %q must start with wss://", *tunnelURL)
	}
	if *tunnel != "" {
		cfg.Tunnel = &quicpipe.TunnelConfig{Addr: *tunnel, URL: *tunnelURL}
		if *tlsCert != "" {
			cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
			if err != nil {
				return fmt.Errorf("tunnel certificate: %w", err)
			}
			cfg.Tunnel.Certificate = &cert
		}
	}
	if *xdpIface != "" {
		modes := map[string]xdp.Mode{"auto": xdp.ModeAuto, "native": xdp.ModeNative, "generic": xdp.ModeGeneric}
		mode, ok := modes[*xdpMode]
		if !ok {
			return usageError(fs, e, "-xdp-mode must be auto, native or generic")
		}
		cfg.FastPath = relayxdp.New(relayxdp.Config{Interface: *xdpIface, Mode: mode})
	}
	key, err := loadIdentity(e, *identity)
	if err != nil {
		return err
	}
	cfg.Identity = key
	cfg.AllowPrivateTargets = *allowPrivate
	cfg.Logger = logger(e, *verbose)
	if *mailbox {
		cfg.Mailbox = &mcfg
	}
	if *tokenSecret != "" {
		secret, err := readTokenSecret(*tokenSecret)
		if err != nil {
			return err
		}
		cfg.Authorizer = &quicpipe.TokenAuthorizer{Secret: secret}
	} else {
		// Open on purpose: the library would warn naming its Go API
		// (RelayConfig.Authorizer); the command's user needs the flag.
		cfg.Authorizer = openAPI
	}
	if *nodeStore != "" {
		name := *fleetMember
		if name == "" {
			name = "node-" + strings.ReplaceAll(*nodeListen, ":", "-")
		}
		var routes []string
		if *nodeRoutes != "" {
			routes = strings.Split(*nodeRoutes, ",")
		}
		node, err := natsnode.Start(natsnode.Config{Name: name, StoreDir: *nodeStore, Listen: *nodeListen,
			ClusterListen: *nodeCluster, Routes: routes})
		if err != nil {
			return err
		}
		defer node.Close()
		cfg.Logger.Info("embedded NATS node serving", "url", node.ClientURL())
		if *fleetURL == "" {
			*fleetURL = node.ClientURL()
		}
	}
	var member *fleet.Member
	if *fleetURL != "" {
		// Before the relay starts: a member that cannot reach NATS exits.
		member, err = fleet.New(ctx, fleet.Config{URL: *fleetURL, Member: *fleetMember, LivenessTTL: *fleetTTL,
			Replicas: *fleetReplicas, Logger: cfg.Logger})
		if err != nil {
			return err
		}
		defer member.Close()
		cfg.Replicator = member
		if cfg.Mailbox != nil {
			// Dialers may post at any member: the flight goes to the
			// member that holds the mailbox.
			cfg.MailboxRouter = member
		}
	}
	probes, err := listenProbes(*probe, *listen, cfg.Logger)
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range probes {
			c.Close()
		}
	}()
	cfg.ProbeConns = probes
	relay, err := quicpipe.ListenRelay(*listen, &cfg)
	if err != nil {
		return err
	}
	if member != nil {
		if err := member.Start(ctx, relay); err != nil {
			relay.Close()
			return err
		}
		cfg.Logger.Info("joined the relay fleet", "member", member.ID(), "nats", *fleetURL)
	}
	if *metrics != "" {
		var more []prometheus.Collector
		if member != nil {
			more = append(more, fleet.NewCollector(member))
		}
		ms, err := relaymetrics.Listen(*metrics, relay, more...)
		if err != nil {
			relay.Close()
			return fmt.Errorf("quicpipe: relay: %w", err)
		}
		defer ms.Close()
		cfg.Logger.Info("serving metrics", "addr", ms.Addr().String())
	}
	pub := quicpipe.EncodeKey(publicKey(key))
	// Standard output: two lines for scripts.
	fmt.Fprintf(e.stdout, "relay listening on %s\nrelay key %s\n", relay.LocalAddr(), pub)
	local := relay.LocalAddr().(*net.UDPAddr)
	addr := local.String()
	if local.IP.IsUnspecified() {
		addr = fmt.Sprintf("<this host's address>:%d", local.Port)
	}
	for _, c := range probes {
		fmt.Fprintf(e.stderr, "quicpipe: answering address probes on %s\n", c.LocalAddr())
	}
	fmt.Fprintf(e.stderr, "quicpipe: listeners use this relay with\n\n    %s listen -relay %s -relay-key %s\n\n", selfCommand(e.arg0), addr, pub)
	if *tokenSecret == "" {
		// Through the logger, so that -log-json keeps every warning JSON.
		cfg.Logger.Warn("the relay API is open: anyone who reaches this relay may register and relay traffic through it; require tokens with -token-secret-file FILE")
	}
	if *metrics != "" {
		fmt.Fprintf(e.stderr, "quicpipe: metrics on http://%s/metrics\n", *metrics)
	}
	if ta := relay.TunnelAddr(); ta != nil {
		fmt.Fprintf(e.stderr, "quicpipe: tunnel for peers without UDP on tcp %s: wss://%s%s\n", ta, ta, quicpipe.TunnelPath)
		fmt.Fprintf(e.stderr, "quicpipe: the tunnel is announced to peers, for their tickets, as %s\n", relay.TunnelURL())
	}
	// Serve returns nil once ctx is done (Ctrl-C).
	return relay.Serve(ctx)
}

// readTokenSecret reads the relay's token secret from path. It refuses a
// file that others than its owner may read (whoever reads the secret mints
// tokens) and a secret shorter than quicpipe.MinTokenSecretLen.
func readTokenSecret(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("token secret: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("token secret: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("token secret %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("token secret %s is readable or writable by others (mode %#o); make it private with chmod 600", path, perm)
	}
	secret, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("token secret: %w", err)
	}
	secret = []byte(strings.TrimSpace(string(secret)))
	if len(secret) < quicpipe.MinTokenSecretLen {
		return nil, fmt.Errorf("token secret in %s is %d bytes; it must be at least %d", path, len(secret), quicpipe.MinTokenSecretLen)
	}
	return secret, nil
}

// openAPI lets every request through: the relay without -token-secret-file.
var openAPI = quicpipe.AuthorizerFunc(func(*http.Request, quicpipe.Operation) error { return nil })

// listenProbes opens the relay's address-probe sockets (-probe): "off" or
// "" for none; "auto" for the two ports after listen's, skipped with a
// warning if taken and not tried if listen's port is 0; otherwise a
// comma-separated list of addresses, each of which must open.
func listenProbes(spec, listen string, log *slog.Logger) ([]*net.UDPConn, error) {
	var addrs []string
	auto := spec == "auto"
	switch spec {
	case "", "off":
		return nil, nil
	case "auto":
		host, port, err := net.SplitHostPort(listen)
		if err != nil {
			return nil, fmt.Errorf("relay address %q: %w", listen, err)
		}
		n, err := strconv.Atoi(port)
		if err != nil || n == 0 || n > 65533 {
			return nil, nil
		}
		addrs = []string{net.JoinHostPort(host, strconv.Itoa(n+1)), net.JoinHostPort(host, strconv.Itoa(n+2))}
	default:
		addrs = strings.Split(spec, ",")
	}
	var conns []*net.UDPConn
	for _, a := range addrs {
		ua, err := net.ResolveUDPAddr("udp", strings.TrimSpace(a))
		if err == nil {
			var c *net.UDPConn
			if c, err = net.ListenUDP("udp", ua); err == nil {
				conns = append(conns, c)
				continue
			}
		}
		if auto {
			log.Warn("no address probes on this port (quicpipe doctor cannot tell how the NAT maps); choose free ones with -probe", "addr", a, "err", err)
			continue
		}
		for _, c := range conns {
			c.Close()
		}
		return nil, fmt.Errorf("address probe socket %s: %w", a, err)
	}
	return conns, nil
}

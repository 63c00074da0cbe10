// Package natsnode runs a NATS server with JetStream inside a relay's
// process, alone or clustered with the nodes of the other members, so that
// a fleet of identical relay binaries needs no separate NATS deployment.
// Members connect to their node's ClientURL with package fleet.
package natsnode

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Config configures a Node. The zero value of each field selects the
// documented default.
type Config struct {
	// Name is the node's name, unique in its cluster. Required.
	Name string
	// StoreDir is where JetStream keeps its data. Required.
	StoreDir string
	// Listen is the address clients (the relay's fleet.Member) connect
	// to, host:port; port 0 picks a free one. If empty, "127.0.0.1:0".
	Listen string
	// ClusterListen is the address other nodes route to, host:port (port
	// 0 picks a free one). If empty, the node runs alone.
	ClusterListen string
	// Routes are the other nodes' ClusterListen addresses, host:port.
	Routes []string
	// ClusterName names the cluster; every node of a fleet uses the same.
	// If empty, "quicpipe-fleet".
	ClusterName string
	// ReadyTimeout bounds how long Start waits for the node to accept
	// clients. If zero, 10s.
	ReadyTimeout time.Duration
}

// Node is a running NATS server.
type Node struct {
	s *server.Server
}

// hostPort splits a host:port address for the server's options: port 0
// becomes the server's "pick a free port".
func hostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return h, port, nil
}

// Start starts a node and waits until it accepts clients. With routes, the
// JetStream cluster forms once a majority of its nodes are up.
func Start(cfg Config) (*Node, error) {
	if cfg.Name == "" || cfg.StoreDir == "" {
		return nil, errors.New("natsnode: Name and StoreDir are required")
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.ClusterName == "" {
		cfg.ClusterName = "quicpipe-fleet"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	host, port, err := hostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("natsnode: Listen: %w", err)
	}
	opts := &server.Options{
		ServerName: cfg.Name,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoLog:      true,
		NoSigs:     true,
	}
	if cfg.ClusterListen != "" {
		ch, cp, err := hostPort(cfg.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("natsnode: ClusterListen: %w", err)
		}
		opts.Cluster = server.ClusterOpts{Name: cfg.ClusterName, Host: ch, Port: cp}
		for _, r := range cfg.Routes {
			opts.Routes = append(opts.Routes, &url.URL{Scheme: "nats", Host: r})
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsnode: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(cfg.ReadyTimeout) {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, fmt.Errorf("natsnode: node %s not accepting clients on %s within %v", cfg.Name, cfg.Listen, cfg.ReadyTimeout)
	}
	return &Node{s: s}, nil
}

// ClientURL is the URL a fleet.Member connects to.
func (n *Node) ClientURL() string { return n.s.ClientURL() }

// ClusterAddr is the address other nodes route to, or nil if the node runs
// alone.
func (n *Node) ClusterAddr() *net.TCPAddr { return n.s.ClusterAddr() }

// Close stops the node and waits until it has stopped.
func (n *Node) Close() {
	n.s.Shutdown()
	n.s.WaitForShutdown()
}

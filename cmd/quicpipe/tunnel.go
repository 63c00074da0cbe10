package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/quicpipe/quicpipe"
)

// tunnelFlags are a peer's flags for the relay's tunnel (listen, connect).
type tunnelFlags struct {
	mode, url, proxy string
}

func addTunnelFlags(fs *flag.FlagSet) *tunnelFlags {
	var f tunnelFlags
	fs.StringVar(&f.mode, "tunnel", "auto", "reach the relay over UDP (`mode` off), through its TLS/WebSocket tunnel (only), or UDP first and the tunnel if UDP gets no answer within 300ms (auto)")
	fs.StringVar(&f.url, "tunnel-url", "", "the relay's tunnel `URL` (wss://host:port/v1/tunnel; empty: the ticket's, else port 443 of the relay's host)")
	fs.StringVar(&f.proxy, "proxy", "", "open the tunnel through this HTTP proxy `URL` (http://[user:password@]host:port; empty: $HTTPS_PROXY)")
	return &f
}

// apply sets cfg's tunnel fields, and makes the peer say on standard error
// which transport reaches the relay.
func (f *tunnelFlags) apply(cfg *quicpipe.Config, e *env) error {
	modes := map[string]quicpipe.TunnelMode{"auto": quicpipe.TunnelAuto, "off": quicpipe.TunnelOff, "only": quicpipe.TunnelOnly}
	m, ok := modes[f.mode]
	if !ok {
		return fmt.Errorf("-tunnel must be auto, off or only, not %q", f.mode)
	}
	if f.url != "" && !strings.HasPrefix(f.url, "wss://") {
		return fmt.Errorf("-tunnel-url %q must start with wss://", f.url)
	}
	cfg.Tunnel, cfg.TunnelURL = m, f.url
	if f.proxy != "" {
		u, err := url.Parse(f.proxy)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("-proxy %q must be http://[user:password@]host:port", f.proxy)
		}
		cfg.TunnelProxy = http.ProxyURL(u)
	}
	cfg.OnRelayTransport = func(t quicpipe.Transport) {
		if t == quicpipe.TransportTunnel {
			where := "port 443 of the relay's host"
			if f.url != "" {
				where = resolveTunnel(f.url, cfg.RelayAddr)
			}
			e.notice("relay transport: tunnel (TLS/WebSocket, " + where + ")")
		} else {
			e.notice("relay transport: udp")
		}
	}
	return nil
}

// announce says which transport reaches the relay when no race decided it
// (-tunnel off: always UDP).
func (f *tunnelFlags) announce(e *env) {
	if f.mode == "off" {
		e.notice("relay transport: udp")
	}
}

// ticketTunnel returns the tunnel URL a listener's ticket carries: the one
// it was given (-tunnel-url), else the one its relay announced, and ""
// when that is where dialers look anyway (port 443 of the relay's host).
func ticketTunnel(given, announced, relayAddr string) string {
	u := given
	if u == "" {
		u = announced
	}
	if u == "" || resolveTunnel(u, relayAddr) == resolveTunnel("wss://", relayAddr) {
		return ""
	}
	return u
}

// resolveTunnel completes a tunnel URL as peers do (Config.TunnelURL): a
// host left out is the relay's, a port 443, a path /v1/tunnel. It returns
// u unchanged if it does not parse.
func resolveTunnel(u, relayAddr string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	host, port := p.Hostname(), p.Port()
	if host == "" {
		host, _, _ = net.SplitHostPort(relayAddr)
	}
	if port == "" {
		port = "443"
	}
	p.Host = net.JoinHostPort(host, port)
	if p.Path == "" {
		p.Path = quicpipe.TunnelPath
	}
	return p.String()
}

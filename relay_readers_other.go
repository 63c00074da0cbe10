//go:build !linux

package quicpipe

import "net"

// reusePortSupported reports whether the relay can open several readers of
// its port: only on Linux.
const reusePortSupported = false

// listenReusePort opens a UDP socket on addr.
func listenReusePort(addr *net.UDPAddr) (*net.UDPConn, error) { return net.ListenUDP("udp", addr) }

// reusePortOf reports false: the relay has one reader outside Linux.
func reusePortOf(*net.UDPConn) (bool, error) { return false, nil }

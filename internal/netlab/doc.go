// Package netlab builds small networks of Linux network namespaces for
// tests: namespaces joined by veth pairs or by links this process emulates
// (delay and rate, for kernels without netem), with routes and nftables
// rulesets set up by the iproute2 and nftables commands. Test code runs in
// the test process and creates sockets inside a namespace (NS.ListenUDP):
// a socket keeps the namespace it was created in.
//
// Every namespace is named after the test process and a random lab ID, so
// that concurrent tests never collide, and is deleted in the test's
// cleanup, failed or not; namespaces left behind by a killed test process
// are deleted by the next lab. It needs root, ip (iproute2), nft
// (nftables) and /dev/net/tun; New skips the test and says why when a lab
// cannot be built.
package netlab

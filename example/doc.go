// Package example holds the end-to-end test of the Quicpipe example programs:
//
//   - server runs a relay;
//   - dialer dials through it and prints its first flight on stdout;
//   - accepter reads that flight on stdin and prints what the dialer sends.
//
// Run them in three terminals:
//
//	go run ./example/server
//	QHOST=127.0.0.1:4433 go run ./example/dialer > packet.json
//	QHOST=127.0.0.1:4433 go run ./example/accepter < packet.json
//
// They use the public demo keys of example/internal/demo, which provide no
// security.
package example

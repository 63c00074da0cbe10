package main

// The sink of the capacity comparison is not a process: nftables in B counts
// and drops every datagram forwarded to the sink port, so that receiving
// costs the same for every relay and no socket can fall behind.
//
// Counting is exact even if a relay sends with UDP GSO: a super-packet of n
// segments reaches B as one packet whose UDP length covers all of them, so
// it is counted apart and its segments are recovered from its bytes.

import (
	"encoding/json"
	"fmt"
	"strings"
)

const (
	sinkPort    = 9000
	payloadSize = 1200
)

func (l *Lab) sinkOn() error {
	rules := fmt.Sprintf(`table ip qpb {
	counter relayed { }
	counter gso { }
	chain in {
		type filter hook input priority -200; policy accept;
		udp dport %[1]d udp length %[2]d counter name relayed drop
		udp dport %[1]d udp length > %[2]d counter name gso drop
		udp dport %[1]d drop
	}
}
`, sinkPort, payloadSize+8)
	ns := l.ns["b"]
	cmd := []string{"netns", "exec", ns, "nft", "-f", "-"}
	return runWithInput("ip", cmd, rules)
}

func (l *Lab) sinkOff() error {
	out, _ := l.output("b", "nft", "list", "tables")
	if !strings.Contains(out, "qpb") {
		return nil
	}
	return l.run("b", "nft", "delete", "table", "ip", "qpb")
}

// sinkCount returns how many payloadSize datagrams the sink has dropped.
func (l *Lab) sinkCount() (float64, error) {
	c, err := l.sinkCounters()
	if err != nil {
		return 0, err
	}
	return c.datagrams(), nil
}

// datagrams is how many payloadSize datagrams the counters stand for.
func (c sinkCounts) datagrams() float64 {
	return c.relayed + (c.gsoBytes-28*c.gso)/payloadSize // IPv4 + UDP headers once per super-packet
}

// sinkCounts are the sink's counters: packets of one datagram, and
// super-packets (a GSO send, or datagrams coalesced on the way) with their
// bytes.
type sinkCounts struct {
	relayed, gso, gsoBytes float64
}

func (l *Lab) sinkCounters() (sinkCounts, error) {
	var n sinkCounts
	out, err := l.output("b", "nft", "-j", "list", "counters", "table", "ip", "qpb")
	if err != nil {
		return n, err
	}
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets float64
				Bytes   float64
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return n, fmt.Errorf("nft counters: %w", err)
	}
	for _, e := range doc.Nftables {
		c := e.Counter
		if c == nil {
			continue
		}
		switch c.Name {
		case "relayed":
			n.relayed += c.Packets
		case "gso":
			n.gso += c.Packets
			n.gsoBytes += c.Bytes
		}
	}
	return n, nil
}

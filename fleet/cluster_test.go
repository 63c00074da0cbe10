package fleet

import (
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/quicpipe/quicpipe/fleet/natsnode"
)

// freePorts returns n TCP ports free on loopback a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// TestFleetCluster runs three embedded NATS nodes clustered on loopback
// (natsnode), members a and b on different nodes, a bucket with three
// replicas: a's registrations reach b, also with one node down.
func TestFleetCluster(t *testing.T) {
	ports := freePorts(t, 3)
	var nodes []*natsnode.Node
	for i := range 3 {
		var routes []string
		for j, p := range ports {
			if j != i {
				routes = append(routes, fmt.Sprintf("127.0.0.1:%d", p))
			}
		}
		n, err := natsnode.Start(natsnode.Config{
			Name:          fmt.Sprintf("n%d", i),
			StoreDir:      t.TempDir(),
			ClusterListen: fmt.Sprintf("127.0.0.1:%d", ports[i]),
			Routes:        routes,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Close)
		nodes = append(nodes, n)
	}
	start := time.Now()
	a := newTestMemberR(t, nodes[0].ClientURL(), "a", 2*time.Second, 3)
	b := newTestMemberR(t, nodes[1].ClientURL(), "b", 2*time.Second, 3)
	t.Logf("cluster formed and members joined in %v", time.Since(start))
	c1, c2 := newClient(t, a), newClient(t, a)
	k1, k2 := newKey(t), newKey(t)
	t0 := time.Now()
	c1.do(t, http.MethodPost, k1, 1, 8)
	waitFor(t, 5*time.Second, "b holds a's registration", func() bool {
		_, ok := b.relay.FleetRecord(k1)
		return ok
	})
	t.Logf("registration at a (node n0) applied at b (node n1) %v after the request", time.Since(t0))

	nodes[2].Close()
	t0 = time.Now()
	c2.do(t, http.MethodPost, k2, 1, 8)
	waitFor(t, 10*time.Second, "b holds a registration made with a node down", func() bool {
		_, ok := b.relay.FleetRecord(k2)
		return ok
	})
	t.Logf("with n2 down: registration applied at b %v after the request", time.Since(t0))
	if s := b.m.Stats(); s.MembersGone != 0 {
		t.Fatalf("b declared %d members dead", s.MembersGone)
	}
}

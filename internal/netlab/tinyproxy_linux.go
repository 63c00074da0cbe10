package netlab

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Tinyproxy runs tinyproxy (Debian: tinyproxy, or tinyproxy-bin) inside
// ns, listening on listen:8888 for clients of allow (a CIDR), with basic
// authentication user:password, and returns once it accepts connections;
// the test stops it. It skips the test if tinyproxy is not installed.
func (n *NS) Tinyproxy(listen, allow, user, password string) {
	t := n.lab.t
	t.Helper()
	bin, err := exec.LookPath("tinyproxy")
	if err != nil {
		t.Skip("tinyproxy is not installed (apt-get install tinyproxy)")
	}
	conf := filepath.Join(t.TempDir(), "tinyproxy.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "Port 8888\nListen %s\nTimeout 60\nAllow %s\nBasicAuth %s %s\nLogLevel Warning\nMaxClients 16\n",
		listen, allow, user, password), 0o600); err != nil {
		t.Fatal(err)
	}
	p := n.Start("tinyproxy", nil, bin, "-d", "-c", conf)
	// Ready once it accepts connections.
	for range 100 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := n.DialContext(ctx, "tcp", net.JoinHostPort(listen, "8888"))
		cancel()
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-p.Done():
			t.Fatalf("tinyproxy exited: %v\n%s", p.err, p.Stderr())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("tinyproxy did not start:\n%s", p.Stderr())
}

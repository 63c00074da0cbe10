package main

// TURN servers: pion/turn as a role of this program, and coturn (the Debian
// package's turnserver) as an external process with a generated
// configuration file.

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"

	"github.com/pion/turn/v5"
)

func init() { roles["pionturn"] = pionTURNRole }

func pionTURNRole(args []string) error {
	fs := flag.NewFlagSet("pionturn", flag.ContinueOnError)
	listen := fs.String("listen", "", "UDP address")
	relayIP := fs.String("relayip", "", "relay address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp4", *listen)
	if err != nil {
		return err
	}
	key := turn.GenerateAuthKey(turnUser, turnRealm, turnPass)
	s, err := turn.NewServer(turn.ServerConfig{
		Realm: turnRealm,
		AuthHandler: func(ra *turn.RequestAttributes) (string, []byte, bool) {
			return ra.Username, key, ra.Username == turnUser
		},
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn: pc,
			RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{
				RelayAddress: net.ParseIP(*relayIP),
				Address:      *relayIP,
			},
		}},
	})
	if err != nil {
		return err
	}
	defer s.Close()
	say("ready", nil)
	serveCommands(func(cmd string, a []string) (any, error) {
		switch cmd {
		case "heap":
			runtime.GC()
			debug.FreeOSMemory()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			rss, _ := procRSS(os.Getpid())
			return map[string]any{"heap_alloc": ms.HeapAlloc, "rss": rss, "allocations": s.AllocationCount()}, nil
		}
		return nil, fmt.Errorf("unknown command")
	})
	return nil
}

// coturnConfig writes a turnserver configuration for listening (and
// relaying) on ip and returns its path.
func coturnConfig(dir, ip string, threads int) (string, error) {
	conf := fmt.Sprintf(`listening-ip=%[1]s
relay-ip=%[1]s
listening-port=3478
min-port=20000
max-port=60000
relay-threads=%[2]d
no-tcp
no-tls
no-dtls
no-tcp-relay
no-cli
no-rfc5780
no-stun-backward-compatibility
no-software-attribute
lt-cred-mech
user=%[3]s:%[4]s
realm=%[5]s
allowed-peer-ip=10.77.0.0-10.77.255.255
allow-loopback-peers
total-quota=0
user-quota=0
max-bps=0
bps-capacity=0
log-file=%[6]s
simple-log
no-stdout-log
pidfile=%[7]s
userdb=%[8]s
`, ip, threads, turnUser, turnPass, turnRealm,
		filepath.Join(dir, "turnserver.log"), filepath.Join(dir, "turnserver.pid"), filepath.Join(dir, "turndb"))
	path := filepath.Join(dir, "turnserver.conf")
	return path, os.WriteFile(path, []byte(conf), 0o600)
}

func haveCoturn() error {
	if _, err := exec.LookPath("turnserver"); err != nil {
		return fmt.Errorf("coturn is not installed (apt-get install coturn): %w", err)
	}
	return nil
}

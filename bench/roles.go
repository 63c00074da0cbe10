package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// A role is this program running as one part of a benchmark inside a
// namespace (see proc.go for the protocol). Roles print "ready <json>" when
// set up, answer commands read from standard input, and exit when it closes.
type roleFunc func(args []string) error

var roles = map[string]roleFunc{}

func runRole(name string, args []string) {
	f, ok := roles[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown role %q\n", name)
		os.Exit(2)
	}
	if err := f(args); err != nil {
		fmt.Fprintf(os.Stderr, "role %s: %v\n", name, err)
		say("err", err.Error())
		os.Exit(1)
	}
	os.Exit(0)
}

var outMu sync.Mutex

// say prints one protocol line: kind followed by v as JSON (or a string).
func say(kind string, v any) {
	var s string
	switch v := v.(type) {
	case nil:
	case string:
		s = v
	default:
		b, err := json.Marshal(v)
		if err != nil {
			s = fmt.Sprintf("%q", err.Error())
		} else {
			s = string(b)
		}
	}
	outMu.Lock()
	defer outMu.Unlock()
	if s == "" {
		fmt.Println(kind)
	} else {
		fmt.Println(kind, s)
	}
}

// serveCommands answers commands from standard input until it closes. The
// handler returns the "ok" answer or an error.
func serveCommands(handle func(cmd string, args []string) (any, error)) {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		v, err := handle(f[0], f[1:])
		if err != nil {
			say("err", f[0]+": "+err.Error())
			continue
		}
		say("ok", v)
	}
}

// serveNothing says ready and refuses every command until standard input
// closes: the lifetime of a role that only serves.
func serveNothing() {
	say("ready", nil)
	serveCommands(func(string, []string) (any, error) { return nil, errors.New("no commands") })
}

// monoNow is CLOCK_MONOTONIC in nanoseconds: the same clock in every process
// on the machine, so that times taken in two namespaces can be subtracted.
func monoNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

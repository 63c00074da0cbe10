package main

// What scripts use: the version, quiet mode, JSON logs, the ticket on
// standard output or in a file, and the command line printed for the other
// side.

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
)

// cmdVersion prints the version of the command on standard output.
func cmdVersion(_ context.Context, e *env) error {
	fs := newFlagSet(e, "version", "", "Prints the version of quicpipe and of Go it was built with.\n")
	if err := parseFlags(fs, e); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError(fs, e, "unexpected arguments %q", fs.Args())
	}
	fmt.Fprintln(e.stdout, versionLine())
	return nil
}

// versionLine describes the build: the module version (or "(devel)"), the
// commit it was built from and whether the tree was modified, and Go's
// version.
func versionLine() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "quicpipe (unknown version) " + runtime.Version()
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = ", modified"
			}
		}
	}
	line := "quicpipe " + v
	if rev != "" && !strings.Contains(v, rev[:min(12, len(rev))]) {
		line += fmt.Sprintf(" (commit %.12s%s)", rev, modified)
	}
	return line + " " + bi.GoVersion
}

// scriptFlags are the flags listen and connect share for scripts.
type scriptFlags struct {
	quiet   *bool
	logJSON *bool
}

func addScriptFlags(fs *flag.FlagSet) scriptFlags {
	return scriptFlags{
		quiet:   fs.Bool("q", false, "quiet: print nothing on standard error but errors (no messages, logs, QR code or progress)"),
		logJSON: fs.Bool("log-json", false, "write logs as JSON, one object a line"),
	}
}

// apply sets up e after the flags were parsed and checked: from then on,
// with -q, standard error shows only the error the command ends with.
func (f scriptFlags) apply(e *env) {
	e.jsonLogs = *f.logJSON
	if *f.quiet {
		e.stderr = io.Discard
		e.stderrFile = nil
	}
}

// writeTicketFile writes the ticket and a newline to path, readable by its
// owner only (the ticket may carry the permission to connect). It appears
// complete or not at all: a script may wait for it.
func writeTicketFile(path string, ticket []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("-ticket-file: %w", err)
	}
	_, err = tmp.Write(append(ticket[:len(ticket):len(ticket)], '\n'))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("-ticket-file: %w", err)
	}
	return nil
}

// selfCommand returns how the other side runs this command: its name when
// that is what PATH finds, "go run ./cmd/quicpipe" under go run (whose
// binary is a temporary file), else the path it was started with.
func selfCommand(arg0 string) string {
	exe, err := os.Executable()
	if err != nil {
		exe = arg0
	}
	name := filepath.Base(arg0)
	if found, err := exec.LookPath(name); err == nil && sameFile(found, exe) {
		return name
	}
	if strings.Contains(exe, string(filepath.Separator)+"go-build") &&
		filepath.Base(filepath.Dir(exe)) == "exe" {
		return "go run ./cmd/quicpipe"
	}
	return arg0
}

// sameFile reports whether the paths name one file.
func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// stdinFor returns the input a stdin/stdout session sends, and whether it
// is a terminal: nothing at all with -recv.
func stdinFor(e *env, recvOnly bool) (io.Reader, bool) {
	if recvOnly {
		return strings.NewReader(""), false
	}
	return e.stdin, isTerminal(e.stdinFile)
}

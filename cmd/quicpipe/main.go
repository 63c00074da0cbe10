// Command quicpipe connects two machines with one QUIC connection through a
// Quicpipe relay and pipes data over it, like netcat with end-to-end
// encryption and NAT traversal.
//
// On one machine:
//
//	quicpipe listen
//
// prints a ticket (and its QR code on a terminal) and waits. On the other:
//
//	quicpipe connect <ticket>
//
// Then standard input on each side comes out on the other side's standard
// output. A side whose standard input is a terminal from which nothing was
// sent does not hold the session open, so "quicpipe listen > file" with
// "quicpipe connect TICKET < file" ends by itself (in either direction).
// With no -relay, listen runs a relay inside its own process on
// loopback, so the two commands work on one machine with nothing else
// running; across machines, run "quicpipe relay" on a host both can reach
// and pass its address and key to listen.
//
// Subcommands:
//
//	quicpipe listen [flags]            print a ticket, accept a dial, pipe stdin/stdout
//	quicpipe connect [flags] TICKET    dial a ticket, pipe stdin/stdout
//	quicpipe relay [flags]             run a relay
//	quicpipe key [flags]               print the public key of an identity
//	quicpipe doctor [flags]            check UDP to a relay, the NAT's mapping, IPv6
//	quicpipe version                   print the version (also --version)
//
// "quicpipe SUBCOMMAND -h" lists each one's flags. Human-readable messages go
// to standard error; standard output carries only piped data (or, for relay
// and key, the lines scripts read).
//
// Exit status: 0 when a stdin/stdout session ended in order (both inputs
// reached their end and everything was delivered); 130 or 143 when SIGINT
// (Ctrl-C) or SIGTERM stopped listen or connect in that mode; 1 on errors,
// including the other side being interrupted, vanishing or refusing the
// session; 2 on usage errors. The relay and the TCP forwarding modes run
// until stopped and exit 0 after SIGINT or SIGTERM.
package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/quicpipe/quicpipe"
)

// errUsage marks errors that exit with status 2; the message was printed.
var errUsage = errors.New("usage")

// env is what a subcommand runs with: its arguments and standard streams.
type env struct {
	args []string
	// arg0 is the name the command was started with.
	arg0   string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// stdinFile, stdoutFile and stderrFile are the standard streams if
	// they are files, to tell whether they are terminals.
	stdinFile, stdoutFile, stderrFile *os.File
	// jsonLogs: the library's logs are JSON (-log-json).
	jsonLogs bool
}

func main() {
	var stderr io.Writer = os.Stderr
	if isTerminal(os.Stderr) {
		stderr = &statusWriter{w: os.Stderr} // messages clear the progress line
	}
	e := &env{args: os.Args[1:], arg0: os.Args[0], stdin: os.Stdin, stdout: os.Stdout, stderr: stderr,
		stdinFile: os.Stdin, stdoutFile: os.Stdout, stderrFile: os.Stderr}
	ctx, cancel := context.WithCancelCause(context.Background())
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-sigc
		// After the first signal, which closes in order, a second one
		// kills.
		signal.Stop(sigc)
		num, _ := sig.(syscall.Signal)
		cancel(&signalError{sig: num})
	}()
	code := run(ctx, e)
	signal.Stop(sigc)
	os.Exit(code)
}

// signalError is the cause of the command's context when a signal stopped
// it. A pipe that a signal ends exits with 128 plus the signal's number, as
// shells report a process killed by it.
type signalError struct {
	sig syscall.Signal
}

func (e *signalError) Error() string { return "interrupted by " + e.sig.String() }

// stopped returns the error a pipe ends with when ctx is done: the
// signal that stopped it.
func stopped(ctx context.Context) error {
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return errors.New("interrupted")
}

const usage = `usage: quicpipe <command> [flags] [arguments]

commands:
  listen               print a ticket, accept a dial through the relay, pipe stdin/stdout
  connect TICKET       dial the listener a ticket names, pipe stdin/stdout
  relay                run a relay
  key                  print the public key of your identity
  doctor               check what this network allows: UDP to the relay, NAT mapping, IPv6
  version              print the version (also --version)

"quicpipe <command> -h" shows the flags of a command.
`

// run runs one command line and returns the exit status.
func run(ctx context.Context, e *env) int {
	if len(e.args) == 0 {
		fmt.Fprint(e.stderr, usage)
		return 2
	}
	cmds := map[string]func(context.Context, *env) error{
		"listen":  cmdListen,
		"connect": cmdConnect,
		"relay":   cmdRelay,
		"key":     cmdKey,
		"version": cmdVersion,
		"doctor":  cmdDoctor,
	}
	name := e.args[0]
	if name == "-h" || name == "-help" || name == "--help" || name == "help" {
		fmt.Fprint(e.stderr, usage)
		return 0
	}
	if name == "-version" || name == "--version" {
		name = "version"
	}
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprintf(e.stderr, "quicpipe: unknown command %q\n\n%s", name, usage)
		return 2
	}
	e.args = e.args[1:]
	stderr := e.stderr // -q may silence e.stderr; errors still go here
	err := cmd(ctx, e)
	e.stderr = stderr
	var sigErr *signalError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &sigErr):
		return 128 + int(sigErr.sig)
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(e.stderr, "quicpipe %s: %s\n", name, message(err))
		return 1
	}
}

// newFlagSet returns a flag set that reports to e.stderr and returns errors.
func newFlagSet(e *env, name, args, doc string) *flag.FlagSet {
	fs := flag.NewFlagSet("quicpipe "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: quicpipe %s [flags]%s\n\n%s\nflags:\n", name, args, doc)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses e.args; wrong flags are usage errors. -h prints the
// usage; a wrong flag prints only the error and a hint to -h, so that the
// error is the line the user sees.
func parseFlags(fs *flag.FlagSet, e *env) error {
	usage := fs.Usage
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(e.args)
	fs.Usage = usage
	fs.SetOutput(e.stderr)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		fs.Usage()
		return err
	}
	return usageError(fs, e, "%s", message(err))
}

// usageError prints msg and a hint to the usage of fs.
func usageError(fs *flag.FlagSet, e *env, format string, args ...any) error {
	fmt.Fprintf(e.stderr, "%s: %s\n", fs.Name(), fmt.Sprintf(format, args...))
	fmt.Fprintf(e.stderr, "Run \"%s -h\" for its usage and flags.\n", fs.Name())
	return errUsage
}

// logger returns the library logger: warnings by default, everything with
// -v, on standard error as text, or as one JSON object a line with
// -log-json.
func logger(e *env, verbose bool) *slog.Logger {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	if e.jsonLogs {
		return slog.New(slog.NewJSONHandler(e.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(e.stderr, opts))
}

// defaultIdentity returns the default path of the identity file called
// name, <user config directory>/quicpipe/<name>.key (for example
// ~/.config/quicpipe/identity.key on Linux), or "" if there is no user
// configuration directory.
func defaultIdentity(name string) string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "quicpipe", name+".key")
}

// loadIdentity loads or creates the identity file at path and says so when
// it creates one.
func loadIdentity(e *env, path string) (ed25519.PrivateKey, error) {
	if path == "" {
		return nil, errors.New("no identity file: give one with -identity")
	}
	_, statErr := os.Stat(path)
	key, err := quicpipe.LoadOrCreateIdentity(path)
	if err != nil {
		return nil, err
	}
	if errors.Is(statErr, os.ErrNotExist) {
		fmt.Fprintf(e.stderr, "quicpipe: created identity %s\n", path)
	}
	return key, nil
}

// cmdKey prints the public key of an identity, creating it if needed.
func cmdKey(_ context.Context, e *env) error {
	fs := newFlagSet(e, "key", "",
		"Prints the public key of your identity (created if missing) on standard output.\n"+
			"Give it to a listener's -allow flag to connect with tickets that carry no secret.\n")
	identity := fs.String("identity", defaultIdentity("identity"), "identity `file`")
	if err := parseFlags(fs, e); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError(fs, e, "unexpected arguments %q", fs.Args())
	}
	key, err := loadIdentity(e, *identity)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, quicpipe.EncodeKey(publicKey(key)))
	return nil
}

func publicKey(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

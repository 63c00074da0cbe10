package netns

import (
	"fmt"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// Of returns the network namespace that socket c lives in (SIOCGSKNS). The
// caller closes the file.
func Of(c syscall.Conn) (*os.File, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd int
	var ierr error
	if err := rc.Control(func(s uintptr) { fd, ierr = unix.IoctlRetInt(int(s), unix.SIOCGSKNS) }); err != nil {
		return nil, err
	}
	if ierr != nil {
		return nil, fmt.Errorf("netns: SIOCGSKNS: %w", ierr)
	}
	return os.NewFile(uintptr(fd), "netns"), nil
}

// IsCurrent reports whether ns is the namespace of the calling thread.
// Threads that nobody moved share the process's namespace.
func IsCurrent(ns *os.File) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &a); err != nil {
		return false, err
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &b); err != nil {
		return false, err
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// Do runs fn on an OS thread switched into ns and waits for it. fn must not
// start goroutines that need to be in ns: only the calling thread is. If
// the thread cannot be switched back, it is discarded rather than reused.
func Do(ns *os.File, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: setns: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it ends with this goroutine.
			errc <- fmt.Errorf("netns: switching back: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

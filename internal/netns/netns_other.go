//go:build !linux

package netns

import (
	"os"
	"syscall"
)

// Of returns ErrUnsupported.
func Of(syscall.Conn) (*os.File, error) { return nil, ErrUnsupported }

// IsCurrent returns ErrUnsupported.
func IsCurrent(*os.File) (bool, error) { return false, ErrUnsupported }

// Do returns ErrUnsupported.
func Do(*os.File, func() error) error { return ErrUnsupported }

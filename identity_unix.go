//go:build !windows

package quicpipe

// unixPermissions tells whether file modes protect identity files.
const unixPermissions = true

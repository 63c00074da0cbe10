//go:build race

package main

// The command is built with the race detector when the test is.
func init() { raceBuild = true }

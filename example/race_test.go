//go:build race

package example_test

// The example programs are built with the race detector when the test is.
func init() { raceBuild = true }

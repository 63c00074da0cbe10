// Package netns runs code inside Linux network namespaces and tells which
// namespace a socket lives in. A socket keeps the namespace it was created
// in, so code that creates sockets inside a namespace (tests building a
// network lab, or listing the interfaces of the namespace a lab socket
// belongs to) can switch one locked OS thread into it, do its work, and
// switch back. The quicpipe library itself never switches namespaces.
//
// On other systems every function returns ErrUnsupported.
package netns

import "errors"

// ErrUnsupported is returned on systems without network namespaces.
var ErrUnsupported = errors.New("netns: network namespaces are not supported on this system")

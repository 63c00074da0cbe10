package quicpipe

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/quicpipe/quicpipe/internal/forward"
)

// maxReaders bounds RelayConfig.Readers.
const maxReaders = 64

// openReaders opens the relay's extra forwarding readers (RelayConfig.Readers):
// sockets bound to the relay's address with SO_REUSEPORT.
// readerSocketBuffer is the receive and send buffer asked for each extra
// reader's socket: quic-go's for its own (protocol.DesiredReceiveBufferSize).
const readerSocketBuffer = 7 << 20

func (r *Relay) openReaders() error {
	n := r.cfg.Readers
	if !reusePortSupported {
		if n > 1 {
			return errors.New("quicpipe: RelayConfig.Readers above 1 needs SO_REUSEPORT (Linux)")
		}
		return nil
	}
	explicit := n != 0
	if n == 0 {
		n = min(runtime.GOMAXPROCS(0), maxReaders)
	}
	if n <= 1 {
		return nil
	}
	ok, err := reusePortOf(r.conn)
	if err != nil {
		return fmt.Errorf("quicpipe: relay socket: %w", err)
	}
	if !ok {
		if explicit {
			return errors.New("quicpipe: RelayConfig.Readers above 1 needs a socket with SO_REUSEPORT set before it was bound")
		}
		r.log.Info("relay socket lacks SO_REUSEPORT: one forwarding reader")
		return nil
	}
	la := r.udpAddr()
	for range n - 1 {
		s, err := listenReusePort(la)
		if err == nil {
			// The buffers quic-go asks for its own socket (7 MiB, within
			// the host's maximum): with the default (about 200 KiB, some
			// 270 small datagrams) a reader stalled for a few tens of
			// milliseconds drops datagrams, as 100,000 sleeping
			// listeners' keep-alives showed (14% lost).
			s.SetReadBuffer(readerSocketBuffer)
			s.SetWriteBuffer(readerSocketBuffer)
			var rd *forward.Reader
			if rd, err = r.rconn.NewReader(s); err == nil {
				r.readers = append(r.readers, rd)
				r.rsocks = append(r.rsocks, s)
				continue
			}
			s.Close()
		}
		r.closeReaders()
		return fmt.Errorf("quicpipe: relay reader socket on %v: %w", la, err)
	}
	return nil
}

// startReaders runs the extra readers until the relay closes their sockets.
func (r *Relay) startReaders() {
	for _, rd := range r.readers {
		r.wg.Go(func() {
			if err := rd.Run(r.closeCtx); err != nil {
				r.log.Error("relay reader stopped", "err", err)
			}
		})
	}
}

// closeReaders closes the extra readers' sockets: their Run returns.
func (r *Relay) closeReaders() error {
	var errs []error
	for _, s := range r.rsocks {
		errs = append(errs, s.Close())
	}
	r.rsocks = nil
	return errors.Join(errs...)
}

package quicpipe

import (
	"errors"
	"fmt"
	"testing"
)

// TestRelayErrorIs: a refusal wraps the sentinel of its code, also through
// further wrapping, and only that one.
func TestRelayErrorIs(t *testing.T) {
	sentinels := []error{ErrUnauthorized, ErrNoMailbox, ErrRelayLimit, ErrRelayClosing, ErrNotSupported}
	for _, c := range []struct {
		code string
		want error
	}{
		{CodeUnauthorized, ErrUnauthorized},
		{CodeNoMailbox, ErrNoMailbox},
		{CodeLimitSource, ErrRelayLimit},
		{CodeLimitSourceCIDs, ErrRelayLimit},
		{CodeLimitDerive, ErrRelayLimit},
		{CodeLimitTotal, ErrRelayLimit},
		{CodeLimitCIDs, ErrRelayLimit},
		{CodeRateLimited, ErrRelayLimit},
		{CodeMailboxBusy, ErrRelayLimit},
		{CodeLimitMailboxes, ErrRelayLimit},
		{CodeClosing, ErrRelayClosing},
		{CodeNotFound, ErrNotSupported},
		{CodeBadJSON, nil},
		{CodeNumRange, nil},
		{"from_a_newer_relay", nil},
	} {
		err := fmt.Errorf("quicpipe: register: %w", &RelayError{Status: 400, Code: c.code})
		for _, s := range sentinels {
			if got := errors.Is(err, s); got != (s == c.want) {
				t.Errorf("code %q: errors.Is(err, %v) = %v", c.code, s, got)
			}
		}
		var re *RelayError
		if !errors.As(err, &re) || re.Code != c.code {
			t.Errorf("code %q: errors.As lost the RelayError", c.code)
		}
	}
}

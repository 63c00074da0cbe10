package quicpipe

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Operation names what an API request wants to do, for an Authorizer.
type Operation string

// Operations of the relay API.
const (
	OpRegister    Operation = "register"
	OpUnregister  Operation = "unregister"
	OpMailboxOpen Operation = "mailbox_open"
	OpMailboxPost Operation = "mailbox_post"
)

// An Authorizer decides whether a request to the relay's API may proceed.
// An embedding service implements it to check, for example, a bearer token,
// a cookie, or the client certificate in req.TLS. A non-nil error refuses the
// request with 401 and code "unauthorized"; its text is sent to the client.
type Authorizer interface {
	Authorize(req *http.Request, op Operation) error
}

// AuthorizerFunc adapts a function to the Authorizer interface.
type AuthorizerFunc func(req *http.Request, op Operation) error

// Authorize calls f(req, op).
func (f AuthorizerFunc) Authorize(req *http.Request, op Operation) error { return f(req, op) }

// tokenPrefix starts every token made by NewToken.
const tokenPrefix = "qpt1"

// NewToken returns an HMAC-signed token that TokenAuthorizer accepts until
// expires: "qpt1.<unix expiry>.<subject>.<base64url HMAC-SHA256>". subject
// names the holder (for logs); it must not contain '.'. Like TURN's REST API
// credentials, tokens need no state on the relay: whoever holds the secret
// (for example a web service that signs users in) mints them.
func NewToken(secret []byte, subject string, expires time.Time) (string, error) {
	if len(secret) < MinTokenSecretLen {
		return "", errShortSecret
	}
	if strings.ContainsAny(subject, ". \t\r\n") || len(subject) > 128 {
		return "", errors.New("quicpipe: token subject must be at most 128 bytes without dots or white space")
	}
	body := tokenPrefix + "." + strconv.FormatInt(expires.Unix(), 10) + "." + subject
	return body + "." + tokenMAC(secret, body), nil
}

func tokenMAC(secret []byte, body string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(body))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// TokenAuthorizer accepts requests carrying "Authorization: Bearer <token>"
// with a token made by NewToken with Secret that has not expired. With a
// Secret shorter than MinTokenSecretLen it accepts nothing (anyone could
// forge tokens for an empty or short secret), and NewRelay refuses it.
type TokenAuthorizer struct {
	// Secret is the shared HMAC key, at least MinTokenSecretLen bytes.
	Secret []byte
	// Now returns the current time. If nil, time.Now is used.
	Now func() time.Time
}

// ErrUnauthorized is wrapped by the errors of TokenAuthorizer.
var ErrUnauthorized = errors.New("quicpipe: unauthorized")

// MinTokenSecretLen is the shortest secret NewToken and TokenAuthorizer
// accept, in bytes.
const MinTokenSecretLen = 16

// errShortSecret is the error of a TokenAuthorizer with a short secret.
var errShortSecret = fmt.Errorf("quicpipe: token secret must be at least %d bytes", MinTokenSecretLen)

// check reports whether the authorizer can verify tokens at all.
func (a *TokenAuthorizer) check() error {
	if len(a.Secret) < MinTokenSecretLen {
		return fmt.Errorf("%w (TokenAuthorizer has %d)", errShortSecret, len(a.Secret))
	}
	return nil
}

// Authorize checks the request's bearer token.
func (a *TokenAuthorizer) Authorize(req *http.Request, _ Operation) error {
	h := req.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return fmt.Errorf("%w: missing bearer token", ErrUnauthorized)
	}
	return a.Verify(tok)
}

// Verify checks one token. It refuses every token if the secret is
// shorter than MinTokenSecretLen.
func (a *TokenAuthorizer) Verify(tok string) error {
	if err := a.check(); err != nil {
		return fmt.Errorf("%w: %w", ErrUnauthorized, err)
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 4 || parts[0] != tokenPrefix {
		return fmt.Errorf("%w: malformed token", ErrUnauthorized)
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return fmt.Errorf("%w: malformed token expiry", ErrUnauthorized)
	}
	body := strings.Join(parts[:3], ".")
	if !hmac.Equal([]byte(parts[3]), []byte(tokenMAC(a.Secret, body))) {
		return fmt.Errorf("%w: bad token signature", ErrUnauthorized)
	}
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	if now().Unix() >= exp {
		return fmt.Errorf("%w: token expired at %s", ErrUnauthorized, time.Unix(exp, 0).UTC().Format(time.RFC3339))
	}
	return nil
}

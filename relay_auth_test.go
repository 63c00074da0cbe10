package quicpipe

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTokenAuthorizerShortSecret: a TokenAuthorizer whose secret is empty or
// short accepts no token, not even one signed with that secret (anyone can
// forge those), and a relay refuses to start with it.
func TestTokenAuthorizerShortSecret(t *testing.T) {
	exp := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	for _, secret := range [][]byte{nil, {}, []byte("short"), []byte("fifteen bytes!!")} {
		t.Run(strconv.Itoa(len(secret)), func(t *testing.T) {
			body := tokenPrefix + "." + exp + ".mallory"
			forged := body + "." + tokenMAC(secret, body)
			a := &TokenAuthorizer{Secret: secret}
			req, _ := http.NewRequest(http.MethodPost, "https://quicpipe"+registerPath, nil)
			req.Header.Set("Authorization", "Bearer "+forged)
			err := a.Authorize(req, OpRegister)
			if err == nil {
				t.Fatalf("a token forged for a %d-byte secret was accepted", len(secret))
			}
			if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "at least 16 bytes") {
				t.Errorf("Authorize: got %v, want ErrUnauthorized saying the secret is too short", err)
			}
			_, err = NewRelay(nil, &RelayConfig{Identity: GenerateIdentity(), Authorizer: a})
			if err == nil || !strings.Contains(err.Error(), "token secret must be at least 16 bytes") {
				t.Errorf("NewRelay with a %d-byte token secret: got %v, want a refusal", len(secret), err)
			}
		})
	}
	if _, err := NewRelay(nil, &RelayConfig{Identity: GenerateIdentity(), Authorizer: (*TokenAuthorizer)(nil)}); err == nil {
		t.Error("NewRelay with a nil *TokenAuthorizer: got no error")
	}
}

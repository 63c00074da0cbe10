package quicpipe

import "time"

// The relay's registration API, served over HTTP/3 under /v1/. The wire format
// is specified in docs/PROTOCOL.md.

// RegisterPath is the path of the registration endpoint.
const RegisterPath = "/v1/register"

// RegisterRequest is the JSON body of POST /v1/register and DELETE
// /v1/register.
type RegisterRequest struct {
	// Key is the peer's CID key (16 to 64 bytes; base64 in JSON).
	Key []byte `json:"key"`
	// Num is the number of CIDs to register (at least 1).
	Num uint32 `json:"num"`
	// First is the index of the first CID to register. If zero, 1 is used.
	First uint32 `json:"first,omitempty"`
}

// RegisterResponse is the JSON answer to a successful registration.
type RegisterResponse struct {
	// Addr is the peer's address as the relay observed it on the HTTP/3
	// connection that carried the request: the address CIDs forward to.
	Addr string `json:"addr"`
	// First and Num give the registered window of CID indexes.
	First uint32 `json:"first"`
	Num   uint32 `json:"num"`
	// Expires is when the registration lapses unless refreshed.
	Expires time.Time `json:"expires"`
	// TTL is the registration lifetime in seconds.
	TTL int `json:"ttl"`
}

// ErrorResponse is the JSON body of every error answer of the relay API.
type ErrorResponse struct {
	// Error is a human-readable message.
	Error string `json:"error"`
	// Code is a stable machine-readable reason, e.g. "bad_json", "key_length",
	// "num_range", "body_too_large", "limit_total", "limit_source".
	Code string `json:"code"`
}

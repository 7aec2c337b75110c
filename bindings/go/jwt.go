package imchat

// #include <stdlib.h>
// #include <imchat/jwt.h>
import "C"

import (
	"time"
	"unsafe"
)

// Claims are the claims of a token for the gateway's HS256
// authentication. Device, Issuer and Audience may be empty (omitted); a
// zero IssuedAt means now, a zero Expires a day after IssuedAt.
type Claims struct {
	User     string
	Device   string
	Issuer   string
	Audience string
	IssuedAt time.Time
	Expires  time.Time
}

// SignHS256 mints an HS256 JWT over c with secret (imc_jwt_sign_hs256).
// It fails with ErrInvalidArgument for an empty secret, an invalid user
// or device id, or an issuer or audience the library refuses.
func SignHS256(secret []byte, c Claims) (string, error) {
	if len(secret) == 0 {
		return "", ErrInvalidArgument
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now()
	}
	if c.Expires.IsZero() {
		c.Expires = c.IssuedAt.Add(24 * time.Hour)
	}
	user, device := C.CString(c.User), C.CString(c.Device)
	iss, aud := C.CString(c.Issuer), C.CString(c.Audience)
	defer func() {
		for _, p := range []*C.char{user, device, iss, aud} {
			C.free(unsafe.Pointer(p))
		}
	}()
	// The secret is Go memory without Go pointers, read during the call
	// only: it may be passed directly.
	out := make([]byte, C.IMC_JWT_SIGN_MAX)
	n := C.imc_jwt_sign_hs256((*C.uint8_t)(unsafe.Pointer(&secret[0])),
		C.size_t(len(secret)), user, device, iss, aud,
		C.int64_t(c.IssuedAt.Unix()), C.int64_t(c.Expires.Unix()),
		(*C.char)(unsafe.Pointer(&out[0])), C.size_t(len(out)))
	if err := codeErr(n); err != nil {
		return "", err
	}
	return string(out[:n]), nil
}

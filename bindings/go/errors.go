package imchat

// #include <imchat/common.h>
import "C"

import "fmt"

// Error is a failure reported by libimchat: Code is the negative IMC_ERR_*
// value. Errors with the same code are equal, so errors.Is(err, ErrAuth)
// matches any Error carrying IMC_ERR_AUTH, however it is wrapped.
type Error struct {
	Code int
}

// The sentinels, one per IMC_ERR_* code of <imchat/common.h> (except
// IMC_ERR_FATAL, a threshold the library never returns). errors_test.go
// checks this list against the header.
var (
	ErrInvalidArgument = Error{C.IMC_ERR_INVALID_ARGUMENT}
	ErrNoMem           = Error{C.IMC_ERR_NOMEM}
	ErrWouldBlock      = Error{C.IMC_ERR_WOULDBLOCK}
	ErrProto           = Error{C.IMC_ERR_PROTO}
	ErrIncomplete      = Error{C.IMC_ERR_INCOMPLETE}
	ErrTooLarge        = Error{C.IMC_ERR_TOO_LARGE}
	ErrNotFound        = Error{C.IMC_ERR_NOT_FOUND}
	ErrAuth            = Error{C.IMC_ERR_AUTH}
	ErrExpired         = Error{C.IMC_ERR_EXPIRED}
	ErrForbidden       = Error{C.IMC_ERR_FORBIDDEN}
	ErrUnavailable     = Error{C.IMC_ERR_UNAVAILABLE}
	ErrClosed          = Error{C.IMC_ERR_CLOSED}
	ErrQueueFull       = Error{C.IMC_ERR_QUEUE_FULL}
	ErrRateLimited     = Error{C.IMC_ERR_RATE_LIMITED}
	ErrBlocked         = Error{C.IMC_ERR_BLOCKED}
	ErrIO              = Error{C.IMC_ERR_IO}
	ErrExists          = Error{C.IMC_ERR_EXISTS}
	ErrRevoked         = Error{C.IMC_ERR_REVOKED}
	ErrCallbackFailure = Error{C.IMC_ERR_CALLBACK_FAILURE}
	ErrInternal        = Error{C.IMC_ERR_INTERNAL}
)

// errorNames maps each code to its C name, for messages and for the test
// that compares the list with the header.
var errorNames = map[Error]string{
	ErrInvalidArgument: "IMC_ERR_INVALID_ARGUMENT",
	ErrNoMem:           "IMC_ERR_NOMEM",
	ErrWouldBlock:      "IMC_ERR_WOULDBLOCK",
	ErrProto:           "IMC_ERR_PROTO",
	ErrIncomplete:      "IMC_ERR_INCOMPLETE",
	ErrTooLarge:        "IMC_ERR_TOO_LARGE",
	ErrNotFound:        "IMC_ERR_NOT_FOUND",
	ErrAuth:            "IMC_ERR_AUTH",
	ErrExpired:         "IMC_ERR_EXPIRED",
	ErrForbidden:       "IMC_ERR_FORBIDDEN",
	ErrUnavailable:     "IMC_ERR_UNAVAILABLE",
	ErrClosed:          "IMC_ERR_CLOSED",
	ErrQueueFull:       "IMC_ERR_QUEUE_FULL",
	ErrRateLimited:     "IMC_ERR_RATE_LIMITED",
	ErrBlocked:         "IMC_ERR_BLOCKED",
	ErrIO:              "IMC_ERR_IO",
	ErrExists:          "IMC_ERR_EXISTS",
	ErrRevoked:         "IMC_ERR_REVOKED",
	ErrCallbackFailure: "IMC_ERR_CALLBACK_FAILURE",
	ErrInternal:        "IMC_ERR_INTERNAL",
}

// Error returns the library's description (imc_strerror) and the code's
// name, e.g. "imchat: credentials missing or invalid (IMC_ERR_AUTH)".
func (e Error) Error() string {
	name, ok := errorNames[e]
	if !ok {
		name = fmt.Sprintf("code %d", e.Code)
	}
	return fmt.Sprintf("imchat: %s (%s)", e.Text(), name)
}

// Text is imc_strerror's description of the code.
func (e Error) Text() string {
	return C.GoString(C.imc_strerror(C.int(e.Code)))
}

// Fatal reports whether the code leaves the object that returned it
// unusable (imc_err_is_fatal).
func (e Error) Fatal() bool {
	return C.imc_err_is_fatal(C.int(e.Code)) != 0
}

// codeErr turns a C return value into nil (rv >= 0) or an Error.
func codeErr(rv C.int) error {
	if rv >= 0 {
		return nil
	}
	return Error{int(rv)}
}

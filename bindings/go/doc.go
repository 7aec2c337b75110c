// Package imchat is the Go binding of libimchat's client SDK
// (<imchat/client.h>): one device of one user talking to an imchat
// gateway.
//
// A Client owns its imc_client on one goroutine (the C object is
// single-threaded); that goroutine also moves the bytes of the
// WebSocket connection (net.Dial), runs the SDK's timers and performs the
// offline sync and history exchanges over net/http. Every exported
// method may be called from any goroutine. What the SDK reports arrives,
// in order, on the channel returned by Client.Events.
//
// Errors of the C library are Error values (the negative IMC_ERR_* code);
// compare them with errors.Is against the Err* sentinels.
//
// See README.md for building (cgo finds libimchat through pkg-config),
// threading and the cgo rules this package follows.
package imchat

// #cgo pkg-config: imchat
import "C"

package imchat

/*
#include <stdlib.h>
#include <imchat/client.h>
#include "callbacks.h"
*/
import "C"

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"runtime/cgo"
	"time"
	"unsafe"
)

// LogLevel is the level of a library log line.
type LogLevel int

const (
	LogError LogLevel = C.IMC_LOG_ERROR
	LogWarn  LogLevel = C.IMC_LOG_WARN
	LogInfo  LogLevel = C.IMC_LOG_INFO
	LogDebug LogLevel = C.IMC_LOG_DEBUG
)

// Options configure a Client. Addr, Token and StorePath are required;
// zero values elsewhere keep the library's defaults (doc/client.md).
type Options struct {
	// Addr is the gateway's host:port; the WebSocket connection and the
	// HTTP requests (offline sync, history) go there.
	Addr string
	// Token is the bearer JWT (see SignHS256).
	Token string
	// StorePath is the SQLite file holding the outbox, the dedup set and
	// the offline cursor; ":memory:" keeps nothing across runs. One file
	// should have one client.
	StorePath string
	// Host is the Host header (default Addr).
	Host string
	// WSPath is the path of the WebSocket endpoint (default "/ws").
	WSPath string
	// InitialBackoff and MaxBackoff bound the reconnect wait, which
	// doubles per failed attempt (defaults 500 ms and 30 s).
	InitialBackoff, MaxBackoff time.Duration
	// Heartbeat is the ping interval (default: the server's), PongTimeout
	// the time allowed for any frame after a ping (default 10 s).
	Heartbeat, PongTimeout time.Duration
	// HandshakeTimeout bounds connecting until the Welcome (default 10 s).
	HandshakeTimeout time.Duration
	// ResendInterval is how long a send waits for its confirmation before
	// it goes out again (default 15 s).
	ResendInterval time.Duration
	// PageLimit is the number of messages per offline or history page
	// (default 100, at most 1000).
	PageLimit int
	// DialContext opens the connection (default: a net.Dialer).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// HTTPClient performs the offline sync and history requests (default:
	// a client over DialContext without proxy or compression).
	HTTPClient *http.Client
	// Log, if set, receives the library's log lines up to LogLevel
	// (LogError when zero), and the binding's own (connect failures;
	// offline pages at LogDebug). It runs on the client's goroutine and
	// must not call the Client.
	Log      func(level LogLevel, line string)
	LogLevel LogLevel
}

// msOption converts a duration to the milliseconds of a setter; 0 keeps
// the default.
func msOption(name string, d time.Duration) (C.uint32_t, error) {
	if d < 0 || d > math.MaxUint32*time.Millisecond {
		return 0, fmt.Errorf("imchat: Options.%s out of range (%v): %w",
			name, d, ErrInvalidArgument)
	}
	ms := (d + time.Millisecond - 1) / time.Millisecond
	return C.uint32_t(ms), nil
}

// cOptions builds the library's options from o, with every callback bound
// to the handle h. The caller frees them with imc_client_options_del.
func cOptions(o *Options, h cgo.Handle) (*C.imc_client_options, error) {
	var opt *C.imc_client_options
	if rv := C.imc_client_options_new(&opt, nil); rv != 0 {
		return nil, codeErr(rv)
	}
	var err error
	defer func() {
		if err != nil {
			C.imc_client_options_del(opt)
		}
	}()
	check := func(what string, rv C.int) {
		if err == nil && rv != 0 {
			err = fmt.Errorf("imchat: Options.%s: %w", what, codeErr(rv))
		}
	}
	str := func(what, s string, set func(*C.imc_client_options, *C.char) C.int) {
		if s == "" || err != nil {
			return
		}
		cs := C.CString(s)
		defer C.free(unsafe.Pointer(cs))
		check(what, set(opt, cs))
	}
	str("StorePath", o.StorePath, func(p *C.imc_client_options, s *C.char) C.int {
		return C.imc_client_options_set_store_path(p, s)
	})
	str("Token", o.Token, func(p *C.imc_client_options, s *C.char) C.int {
		return C.imc_client_options_set_token(p, s)
	})
	host := o.Host
	if host == "" {
		host = o.Addr
	}
	str("Host", host, func(p *C.imc_client_options, s *C.char) C.int {
		return C.imc_client_options_set_host(p, s)
	})
	str("WSPath", o.WSPath, func(p *C.imc_client_options, s *C.char) C.int {
		return C.imc_client_options_set_ws_path(p, s)
	})

	ms := map[string]C.uint32_t{}
	for name, d := range map[string]time.Duration{
		"InitialBackoff": o.InitialBackoff, "MaxBackoff": o.MaxBackoff,
		"Heartbeat": o.Heartbeat, "PongTimeout": o.PongTimeout,
		"HandshakeTimeout": o.HandshakeTimeout,
		"ResendInterval":   o.ResendInterval,
	} {
		v, e := msOption(name, d)
		if e != nil && err == nil {
			err = e
		}
		ms[name] = v
	}
	if err != nil {
		return nil, err
	}
	if ms["InitialBackoff"] != 0 || ms["MaxBackoff"] != 0 {
		initial, max := ms["InitialBackoff"], ms["MaxBackoff"]
		if initial == 0 {
			initial = 500
		}
		if max == 0 {
			max = 30000
		}
		check("InitialBackoff/MaxBackoff",
			C.imc_client_options_set_backoff(opt, initial, max))
	}
	if ms["Heartbeat"] != 0 || ms["PongTimeout"] != 0 {
		pong := ms["PongTimeout"]
		if pong == 0 {
			pong = 10000
		}
		check("Heartbeat/PongTimeout",
			C.imc_client_options_set_heartbeat(opt, ms["Heartbeat"], pong))
	}
	if v := ms["HandshakeTimeout"]; v != 0 {
		check("HandshakeTimeout", C.imc_client_options_set_handshake_timeout_ms(opt, v))
	}
	if v := ms["ResendInterval"]; v != 0 {
		check("ResendInterval", C.imc_client_options_set_resend_ms(opt, v))
	}
	if o.PageLimit != 0 {
		if o.PageLimit < 0 || o.PageLimit > math.MaxUint32 {
			check("PageLimit", C.IMC_ERR_INVALID_ARGUMENT)
		} else {
			check("PageLimit", C.imc_client_options_set_page_limit(opt, C.uint32_t(o.PageLimit)))
		}
	}
	level := C.int(-1)
	if o.Log != nil {
		level = C.int(o.LogLevel)
	}
	check("callbacks", C.imcgo_client_options_set_hooks(opt, C.uintptr_t(h), level))
	if err != nil {
		return nil, err
	}
	return opt, nil
}

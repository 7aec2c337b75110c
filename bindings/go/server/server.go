// Package server runs libimchat-server (<imchat/server.h>), the whole
// single-node server that imchatd is, inside a Go program: the WebSocket
// gateway, the HTTP API, routing and the SQLite store, configured with
// imchatd's flags.
//
//	srv, err := server.Start(server.Config{Flags: []string{
//		"--listen", "127.0.0.1:0", "--data-dir", dir, "--jwt-secret", secret}})
//	addr := srv.Address() // "127.0.0.1:PORT", for imchat.Options.Addr
//	...
//	err = srv.Stop() // graceful: connections get close code 1001
//
// The server's loop runs in a C call on an OS thread of its own (a
// goroutine locked to it); the library adds its storage thread. It
// installs no signal handlers.
package server

/*
#cgo pkg-config: imchat-server
#include <stdlib.h>
#include <imchat/server.h>
#include "log.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"runtime/cgo"
	"sync"
	"unsafe"

	"imchat.local/imchat"
)

// Config configures a server.
type Config struct {
	// Flags are imchatd's flags (imchatd --help), e.g. "--listen",
	// "127.0.0.1:0", "--data-dir", dir, "--jwt-secret", secret. --help,
	// --version and the token subcommand are refused.
	Flags []string
	// Log, if set, receives the server's log lines (no timestamp, at or
	// below --log-level) on the server's thread; nil leaves them on
	// stderr. It must not call Stop. The lines of the creation itself
	// (the start banner, the bound address) still go to stderr: the
	// library takes the hook only once the server exists.
	Log func(level imchat.LogLevel, line string)
}

// Server is a running libimchat-server.
type Server struct {
	addr string
	done chan struct{}
	err  error // what imc_server_run returned, once done is closed

	mu sync.Mutex
	s  *C.imc_server // nil once freed
}

// errCap is the room for imc_server_new's reason.
const errCap = 512

// Start creates the server (store, storage thread, bound listener) and
// runs it. It fails with an error wrapping imchat.ErrInvalidArgument (bad
// flags, values or files), imchat.ErrNoMem or imchat.ErrIO (the data
// directory, the store or the listener, e.g. an address in use), with the
// library's reason in its text.
func Start(c Config) (*Server, error) {
	srv := &Server{done: make(chan struct{})}
	started := make(chan error, 1)
	go srv.run(c, started)
	if err := <-started; err != nil {
		return nil, err
	}
	return srv, nil
}

// run makes every call on the C server but stop and reload, on one OS
// thread. The goroutine exits still locked, so the thread the C loop ran
// on is not reused by Go.
func (srv *Server) run(c Config, started chan<- error) {
	runtime.LockOSThread()
	s, err := newServer(c.Flags)
	if err != nil {
		close(srv.done)
		started <- err
		return
	}
	var h cgo.Handle
	if c.Log != nil {
		h = cgo.NewHandle(c.Log)
		C.imcgo_server_set_log(s, C.uintptr_t(h))
	}
	srv.addr = C.GoString(C.imc_server_address(s))
	srv.mu.Lock()
	srv.s = s
	srv.mu.Unlock()
	started <- nil

	rv := C.imc_server_run(s)

	srv.mu.Lock()
	C.imc_server_del(s) // logs through the hook: the handle lives on
	srv.s = nil
	srv.mu.Unlock()
	if h != 0 {
		h.Delete()
	}
	if rv < 0 {
		srv.err = fmt.Errorf("imchat server: %w", imchat.Error{Code: int(rv)})
	}
	close(srv.done)
}

// newServer is imc_server_new with argv "imchatd" followed by flags.
func newServer(flags []string) (*C.imc_server, error) {
	argc := len(flags) + 1
	argv := unsafe.Slice((**C.char)(C.calloc(C.size_t(argc), C.size_t(unsafe.Sizeof((*C.char)(nil))))), argc)
	defer C.free(unsafe.Pointer(&argv[0]))
	argv[0] = C.CString("imchatd")
	for i, f := range flags {
		argv[i+1] = C.CString(f)
	}
	defer func() {
		for _, p := range argv {
			C.free(unsafe.Pointer(p))
		}
	}()
	var s *C.imc_server
	var reason [errCap]C.char
	rv := C.imc_server_new(&s, C.int(argc), &argv[0], &reason[0], errCap)
	if rv != 0 {
		return nil, fmt.Errorf("imchat server: %s: %w", C.GoString(&reason[0]), imchat.Error{Code: int(rv)})
	}
	return s, nil
}

// Address is the bound "ip:port" of the WebSocket and HTTP listener (a
// port 0 in --listen resolved).
func (srv *Server) Address() string {
	return srv.addr
}

// Stop asks for a graceful stop (connections are closed with code 1001,
// for up to 5 s; what is queued is persisted), waits for it and frees the
// server. It returns nil or the error that ended the loop; calling it
// again returns the same.
func (srv *Server) Stop() error {
	srv.mu.Lock()
	if srv.s != nil {
		C.imc_server_stop(srv.s)
	}
	srv.mu.Unlock()
	return srv.Wait()
}

// Reload does what SIGHUP does to imchatd: --filter-file and --key-file
// are read again (on failure the previous ones stay, with a warning).
func (srv *Server) Reload() {
	srv.mu.Lock()
	if srv.s != nil {
		C.imc_server_reload(srv.s)
	}
	srv.mu.Unlock()
}

// Wait waits until the server has stopped (by Stop, or because its event
// loop failed) and been freed, and returns what Stop returns.
func (srv *Server) Wait() error {
	<-srv.done
	return srv.err
}

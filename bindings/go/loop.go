package imchat

/*
#include <stdlib.h>
#include <imchat/client.h>
*/
import "C"

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/cgo"
	"time"
	"unsafe"
)

const (
	readChunk   = 64 << 10         // bytes per read of the connection
	maxAnswer   = 64 << 20         // largest HTTP answer accepted
	syncTimeout = 30 * time.Second // one offline page's HTTP exchange
)

// loop is the goroutine that owns an imc_client. Every field below the
// channels is touched by that goroutine only (and by the callbacks, which
// run inside its C calls); other goroutines reach the client through
// calls and report back through the result channels.
type loop struct {
	c    *C.imc_client
	h    cgo.Handle
	opts Options
	dial func(context.Context, string, string) (net.Conn, error)
	http *http.Client

	calls   chan call
	closing chan struct{} // closed by Close
	done    chan struct{} // closed once the C client is freed
	quit    chan struct{} // closed when the loop ends: helpers give up
	events  chan Event
	ctx     context.Context
	cancel  context.CancelFunc

	rx     chan rxChunk
	wrote  chan writeResult
	dialed chan dialResult
	synced chan syncResult

	pending     []Event
	gen         uint64 // connection generation: results of older ones are stale
	conn        net.Conn
	dialing     bool
	dialCancel  context.CancelFunc
	writing     bool
	syncing     bool
	syncBlocked bool // the last sync failed: wait for the next Welcome
	wantDial    bool // set by the state callback
	dropConn    bool // set by the state callback
}

type call struct {
	f     func(*loop) error
	reply chan error
}

type rxChunk struct {
	gen  uint64
	data []byte
	err  error
}

type writeResult struct {
	gen uint64
	n   int
	err error
}

type dialResult struct {
	gen  uint64
	conn net.Conn
	err  error
}

type syncResult struct {
	ans []byte
	err error
}

func newLoop(o Options) *loop {
	l := &loop{
		opts:    o,
		dial:    o.DialContext,
		http:    o.HTTPClient,
		calls:   make(chan call),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
		quit:    make(chan struct{}),
		events:  make(chan Event),
		rx:      make(chan rxChunk),
		wrote:   make(chan writeResult),
		dialed:  make(chan dialResult),
		synced:  make(chan syncResult),
	}
	if l.dial == nil {
		l.dial = defaultDial
	}
	if l.http == nil {
		l.http = defaultHTTP(l.dial)
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

func (l *loop) run() {
	C.imc_client_start(l.c)
	for {
		l.settle()
		var timer *time.Timer
		var due <-chan time.Time
		if t := C.imc_client_next_timeout_ms(l.c); t >= 0 {
			timer = time.NewTimer(time.Duration(t) * time.Millisecond)
			due = timer.C
		}
		var out chan<- Event
		var next Event
		if len(l.pending) > 0 {
			out, next = l.events, l.pending[0]
		}
		select {
		case <-l.closing:
			if timer != nil {
				timer.Stop()
			}
			l.shutdown()
			return
		case r := <-l.calls:
			r.reply <- r.f(l)
		case r := <-l.rx:
			l.onRead(r)
		case r := <-l.wrote:
			l.onWrote(r)
		case r := <-l.dialed:
			l.onDialed(r)
		case r := <-l.synced:
			l.onSynced(r)
		case <-due:
			C.imc_client_on_timeout(l.c)
		case out <- next:
			l.pending[0] = nil
			l.pending = l.pending[1:]
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// settle acts on what the last C call asked for: drop or open the
// connection, write pending output, start the offline sync.
func (l *loop) settle() {
	if l.dropConn {
		l.dropConn = false
		l.closeConn()
	}
	state := C.imc_client_get_state(l.c)
	if l.wantDial {
		l.wantDial = false
		if state == C.IMC_CLIENT_CONNECTING && l.conn == nil && !l.dialing {
			l.startDial()
		}
	}
	if l.conn != nil && !l.writing && C.imc_client_want_write(l.c) != 0 {
		l.startWrite()
	}
	if state == C.IMC_CLIENT_ONLINE && !l.syncing && !l.syncBlocked &&
		C.imc_client_want_sync(l.c) != 0 {
		l.startSync()
	}
}

// onState is the state callback: it records what settle must do.
func (l *loop) onState(s State, reason error) {
	l.emit(&StateChange{State: s, Reason: reason})
	switch s {
	case StateConnecting:
		l.wantDial = true
	case StateWaiting, StateFailed, StateStopped:
		l.dropConn = true
	case StateOnline:
		l.syncBlocked = false
	}
}

func (l *loop) emit(e Event) {
	l.pending = append(l.pending, e)
}

func (l *loop) log(level LogLevel, line string) {
	if l.opts.Log != nil && level <= l.opts.LogLevel {
		l.opts.Log(level, line)
	}
}

// closeConn closes the connection (or abandons the dial) and makes the
// results still on their way stale.
func (l *loop) closeConn() {
	if l.dialCancel != nil {
		l.dialCancel()
		l.dialCancel = nil
	}
	if l.conn != nil {
		l.conn.Close()
		l.conn = nil
	}
	l.gen++
	l.dialing = false
	l.writing = false
}

func (l *loop) startDial() {
	ctx, cancel := context.WithCancel(l.ctx)
	l.dialing, l.dialCancel = true, cancel
	gen, addr := l.gen, l.opts.Addr
	go func() {
		conn, err := l.dial(ctx, "tcp", addr)
		select {
		case l.dialed <- dialResult{gen, conn, err}:
		case <-l.quit:
			if conn != nil {
				conn.Close()
			}
		}
	}()
}

func (l *loop) onDialed(r dialResult) {
	if r.gen != l.gen || !l.dialing {
		if r.conn != nil {
			r.conn.Close()
		}
		return
	}
	l.dialing = false
	l.dialCancel()
	l.dialCancel = nil
	if r.err != nil {
		l.log(LogWarn, fmt.Sprintf("imchat-go: connecting to %s: %v", l.opts.Addr, r.err))
		C.imc_client_disconnected(l.c, C.IMC_ERR_IO)
		return
	}
	l.conn = r.conn
	go l.read(r.conn, r.gen)
	C.imc_client_connected(l.c)
}

// read moves what arrives on conn to the loop until an error (the loop
// closing conn ends it too).
func (l *loop) read(conn net.Conn, gen uint64) {
	buf := make([]byte, readChunk)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			data := append([]byte(nil), buf[:n]...)
			select {
			case l.rx <- rxChunk{gen: gen, data: data}:
			case <-l.quit:
				return
			}
		}
		if err != nil {
			select {
			case l.rx <- rxChunk{gen: gen, err: err}:
			case <-l.quit:
			}
			return
		}
	}
}

func (l *loop) onRead(r rxChunk) {
	if r.gen != l.gen {
		return
	}
	if r.err != nil {
		reason := C.int(C.IMC_ERR_IO)
		if errors.Is(r.err, io.EOF) {
			reason = 0
		}
		C.imc_client_disconnected(l.c, reason)
		return
	}
	C.imc_client_recv(l.c, bytesPtr(r.data), C.size_t(len(r.data)))
}

// startWrite hands a copy of the waiting output to a writer goroutine;
// one write is in flight at a time and its result consumes the output.
func (l *loop) startWrite() {
	var p *C.uint8_t
	n := C.imc_client_output(l.c, &p)
	if n == 0 {
		return
	}
	b := C.GoBytes(unsafe.Pointer(p), C.int(n))
	l.writing = true
	conn, gen := l.conn, l.gen
	go func() {
		n, err := conn.Write(b)
		select {
		case l.wrote <- writeResult{gen, n, err}:
		case <-l.quit:
		}
	}()
}

func (l *loop) onWrote(r writeResult) {
	if r.gen != l.gen {
		return
	}
	l.writing = false
	if r.n > 0 {
		C.imc_client_output_consume(l.c, C.size_t(r.n))
	}
	if r.err != nil {
		C.imc_client_disconnected(l.c, C.IMC_ERR_IO)
	}
}

func (l *loop) startSync() {
	var p *C.uint8_t
	var n C.size_t
	if rv := C.imc_client_sync_request(l.c, &p, &n); rv != 0 {
		l.syncFailed(codeErr(rv))
		return
	}
	req := C.GoBytes(unsafe.Pointer(p), C.int(n))
	l.syncing = true
	l.log(LogDebug, "imchat-go: offline sync: requesting a page")
	go func() {
		ctx, cancel := context.WithTimeout(l.ctx, syncTimeout)
		defer cancel()
		ans, err := l.exchange(ctx, req)
		select {
		case l.synced <- syncResult{ans, err}:
		case <-l.quit:
		}
	}()
}

func (l *loop) onSynced(r syncResult) {
	l.syncing = false
	if r.err != nil {
		l.syncFailed(r.err)
		return
	}
	rv := C.imc_client_sync_response(l.c, bytesPtr(r.ans), C.size_t(len(r.ans)))
	l.log(LogDebug, fmt.Sprintf("imchat-go: offline page of %d bytes: %d", len(r.ans), int(rv)))
	if rv == C.IMC_ERR_INCOMPLETE {
		rv = C.IMC_ERR_PROTO // the whole answer was read
	}
	if rv < 0 {
		l.syncFailed(codeErr(rv))
	}
	// 1: settle requests the next page; 0: want_sync is 0 now.
}

func (l *loop) syncFailed(err error) {
	l.syncBlocked = true
	l.emit(&SyncError{Err: fmt.Errorf("imchat: offline sync: %w", err)})
}

// exchange sends a request the SDK wrote (raw HTTP/1.1) with net/http and
// returns the answer as the SDK reads it: status line, headers and a body
// of Content-Length bytes. Safe from any goroutine.
func (l *loop) exchange(ctx context.Context, raw []byte) ([]byte, error) {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		return nil, fmt.Errorf("imchat: reading the SDK's request: %w", err)
	}
	req.RequestURI = ""
	req.URL.Scheme = "http"
	req.URL.Host = l.opts.Addr
	resp, err := l.http.Do(req.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxAnswer {
		return nil, fmt.Errorf("imchat: HTTP answer over %d bytes: %w", maxAnswer, ErrTooLarge)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.TransferEncoding = nil
	var b bytes.Buffer
	if err := resp.Write(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// send is SendMessage on the loop.
func (l *loop) send(to, group string, body []byte, contentType string) (string, error) {
	cstr := func(s string) *C.char {
		if s == "" {
			return nil
		}
		return C.CString(s)
	}
	cto, cgroup, cct := cstr(to), cstr(group), cstr(contentType)
	defer C.free(unsafe.Pointer(cto))
	defer C.free(unsafe.Pointer(cgroup))
	defer C.free(unsafe.Pointer(cct))
	var id [C.IMC_CLIENT_MSG_ID_LEN + 1]C.char
	rv := C.imc_client_send(l.c, cto, cgroup, bytesPtr(body), C.size_t(len(body)), cct, &id[0])
	if rv != 0 {
		return "", codeErr(rv)
	}
	return C.GoString(&id[0]), nil
}

// shutdown stops and frees the C client, releases the helper goroutines,
// then hands the events still queued to the reader and closes Events.
func (l *loop) shutdown() {
	C.imc_client_stop(l.c)
	l.closeConn()
	C.imc_client_del(l.c)
	l.c = nil
	l.h.Delete()
	l.cancel()
	close(l.quit)
	close(l.done)
	for _, e := range l.pending {
		l.events <- e
	}
	l.pending = nil
	close(l.events)
}

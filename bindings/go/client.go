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
	"net"
	"net/http"
	"runtime/cgo"
	"sync"
	"unsafe"
)

// Client is one device of one user connected to a gateway: an imc_client
// driven by a goroutine of its own. It connects at once and reconnects
// with backoff until Close. Its methods may be called from any goroutine.
type Client struct {
	l         *loop
	closeOnce sync.Once
}

// NewClient opens the store and starts connecting. It fails with
// ErrInvalidArgument (a required option missing or out of range) or ErrIO
// (the store cannot be opened); the error wraps the Error.
func NewClient(o Options) (*Client, error) {
	if o.Addr == "" {
		return nil, fmt.Errorf("imchat: Options.Addr is required: %w", ErrInvalidArgument)
	}
	l := newLoop(o)
	l.h = cgo.NewHandle(l)
	opt, err := cOptions(&o, l.h)
	if err != nil {
		l.h.Delete()
		return nil, err
	}
	var c *C.imc_client
	rv := C.imc_client_new(&c, opt, nil)
	C.imc_client_options_del(opt)
	if rv != 0 {
		l.h.Delete()
		return nil, fmt.Errorf("imchat: creating the client: %w", codeErr(rv))
	}
	l.c = c
	go l.run()
	return &Client{l: l}, nil
}

// Events delivers, in order, what the client reports: *Message,
// *SendAck, *DeliveryStatus, *SendError, *StateChange and *SyncError.
// Events queue without bound until read. A received message is
// acknowledged to the server once it is queued here, so read them all:
// after Close the events still queued stay readable, then the channel is
// closed.
func (c *Client) Events() <-chan Event {
	return c.l.events
}

// Send queues text to user to (content type text/plain) and returns its
// client_msg_id. The message is in the store's outbox when Send returns
// and goes out when the client is online, again after each reconnect
// until a DeliveryStatus (or a SendAck of a repeat) confirms it.
func (c *Client) Send(to, text string) (string, error) {
	return c.SendMessage(to, "", []byte(text), "")
}

// SendGroup queues text to group group and returns its client_msg_id.
func (c *Client) SendGroup(group, text string) (string, error) {
	return c.SendMessage("", group, []byte(text), "")
}

// SendMessage queues body to user to or (to "") group group, with
// contentType ("" means text/plain), and returns its client_msg_id. It
// fails with ErrInvalidArgument (both or neither recipient, an invalid
// id or content type), ErrIO (the store failed: nothing queued) or
// ErrClosed (after Close).
func (c *Client) SendMessage(to, group string, body []byte, contentType string) (string, error) {
	var id string
	err := c.do(func(l *loop) error {
		var err error
		id, err = l.send(to, group, body, contentType)
		return err
	})
	return id, err
}

// State is the connection's current state (StateStopped after Close).
func (c *Client) State() State {
	st := StateStopped
	c.do(func(l *loop) error {
		st = State(C.imc_client_get_state(l.c))
		return nil
	})
	return st
}

// UserID is the user id of the last Welcome (kept in the store), or "".
func (c *Client) UserID() string {
	var id string
	c.do(func(l *loop) error {
		id = C.GoString(C.imc_client_get_user_id(l.c))
		return nil
	})
	return id
}

// OutboxSize is the number of sends not yet confirmed (0 after Close; the
// store keeps them for the next client on it).
func (c *Client) OutboxSize() int {
	n := 0
	c.do(func(l *loop) error {
		n = int(C.imc_client_outbox_size(l.c))
		return nil
	})
	return n
}

// HistoryPage is one page of a conversation's history.
type HistoryPage struct {
	Messages     []Message
	NextAfterSeq uint64 // afterSeq of the next page
	More         bool   // another page follows
}

// History reads one page of conversationID's history (p:<a>:<b> or
// g:<group>) after seq afterSeq, without recording anything in the store.
// It fails with ErrInvalidArgument (a bad conversation id), ErrAuth,
// ErrForbidden (not a member), ErrProto, ErrUnavailable, a net/http error
// or ErrClosed.
func (c *Client) History(ctx context.Context, conversationID string, afterSeq uint64) (*HistoryPage, error) {
	page := &HistoryPage{}
	next, more, err := c.historyPage(ctx, conversationID, afterSeq, &page.Messages)
	if err != nil {
		return nil, err
	}
	page.NextAfterSeq, page.More = next, more
	return page, nil
}

// RepairGap reads conversationID's history after afterSeq (a Message's
// LastSeq when it carries FlagGap) to its end through the store: messages
// not seen before arrive on Events with FlagHistory. Errors as History.
func (c *Client) RepairGap(ctx context.Context, conversationID string, afterSeq uint64) error {
	for {
		next, more, err := c.historyPage(ctx, conversationID, afterSeq, nil)
		if err != nil || !more {
			return err
		}
		afterSeq = next
	}
}

// historyPage runs one history exchange: the request and the answer on
// the client's goroutine, the HTTP request on the caller's. With view, the
// page's messages are appended to it; without, they go through the inbox.
func (c *Client) historyPage(ctx context.Context, conv string, afterSeq uint64, view *[]Message) (next uint64, more bool, err error) {
	var req []byte
	err = c.do(func(l *loop) error {
		cs := C.CString(conv)
		defer C.free(unsafe.Pointer(cs))
		var p *C.uint8_t
		var n C.size_t
		if rv := C.imc_client_history_request(l.c, cs, C.uint64_t(afterSeq), &p, &n); rv != 0 {
			return codeErr(rv)
		}
		req = C.GoBytes(unsafe.Pointer(p), C.int(n))
		return nil
	})
	if err != nil {
		return 0, false, err
	}
	ans, err := c.l.exchange(ctx, req)
	if err != nil {
		return 0, false, err
	}
	err = c.do(func(l *loop) error {
		var h C.uintptr_t
		if view != nil {
			vh := cgo.NewHandle(view)
			defer vh.Delete()
			h = C.uintptr_t(vh)
		}
		var nx C.uint64_t
		rv := C.imcgo_client_history_response(l.c, bytesPtr(ans), C.size_t(len(ans)), h, &nx)
		if rv < 0 {
			if rv == C.IMC_ERR_INCOMPLETE {
				rv = C.IMC_ERR_PROTO // the whole answer was read
			}
			return codeErr(rv)
		}
		next, more = uint64(nx), rv == 1
		return nil
	})
	return next, more, err
}

// Close stops the client (the outbox stays in the store), closes the
// connection and frees the C client. Later calls fail with ErrClosed.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { close(c.l.closing) })
	<-c.l.done
	return nil
}

// do runs f on the client's goroutine and returns its error, or
// ErrClosed once the client is closed.
func (c *Client) do(f func(*loop) error) error {
	r := call{f: f, reply: make(chan error, 1)}
	select {
	case c.l.calls <- r:
		return <-r.reply
	case <-c.l.done:
		return ErrClosed
	}
}

// defaultDial is the DialContext of a zero net.Dialer.
func defaultDial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// defaultHTTP is the HTTP client of the offline sync and history: it goes
// straight to the gateway (no proxy) and leaves the body as sent.
func defaultHTTP(dial func(context.Context, string, string) (net.Conn, error)) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:        dial,
		DisableCompression: true,
	}}
}

// bytesPtr is the address of b's first byte for a C call that only reads
// it during the call, or NULL for an empty b.
func bytesPtr(b []byte) *C.uint8_t {
	if len(b) == 0 {
		return nil
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0]))
}

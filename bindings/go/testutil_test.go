package imchat

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"imchat.local/imchat/imchattest"
)

const waitTimeout = 15 * time.Second

// token signs a token for user with the server's secret.
func token(t *testing.T, user string) string {
	t.Helper()
	tok, err := SignHS256([]byte(imchattest.Secret), Claims{User: user, Device: "go-test"})
	if err != nil {
		t.Fatalf("SignHS256: %v", err)
	}
	return tok
}

// testClient is a Client with the events it has read and not yet matched,
// and the library's log lines, shown when a wait fails.
type testClient struct {
	*Client
	t       *testing.T
	name    string
	backlog []Event
	log     *clientLog
}

// clientLog collects log lines; Options.Log runs on the client's goroutine.
type clientLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *clientLog) add(level LogLevel, line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, time.Now().Format("15:04:05.000 ")+line)
}

func (l *clientLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// connect creates a client of user with its store at store (a new
// file in the test's directory if "") and closes it when the test ends.
func connect(t *testing.T, s *imchattest.Server, user, store, tok string) *testClient {
	t.Helper()
	if store == "" {
		store = t.TempDir() + "/" + user + ".db"
	}
	if tok == "" {
		tok = token(t, user)
	}
	log := &clientLog{}
	c, err := NewClient(Options{Addr: s.Addr, Token: tok, StorePath: store,
		InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
		Log: log.add, LogLevel: LogDebug})
	if err != nil {
		t.Fatalf("NewClient(%s): %v", user, err)
	}
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			t.Logf("log of %s's client:\n%s", user, log)
		}
	})
	return &testClient{Client: c, t: t, name: user, log: log}
}

// waitFor returns the first event (already read or arriving within
// waitTimeout) that match accepts; the others stay for later waits.
func (c *testClient) waitFor(what string, match func(Event) bool) Event {
	c.t.Helper()
	for i, e := range c.backlog {
		if match(e) {
			c.backlog = append(c.backlog[:i], c.backlog[i+1:]...)
			return e
		}
	}
	timeout := time.After(waitTimeout)
	for {
		select {
		case e, ok := <-c.Events():
			if !ok {
				c.t.Fatalf("%s: events closed while waiting for %s; unmatched: %s", c.name, what, describe(c.backlog))
			}
			if match(e) {
				return e
			}
			c.backlog = append(c.backlog, e)
		case <-timeout:
			c.t.Fatalf("%s: no %s within %v; unmatched events: %s", c.name, what, waitTimeout, describe(c.backlog))
		}
	}
}

func (c *testClient) waitState(want State) *StateChange {
	c.t.Helper()
	return c.waitFor("state "+want.String(), func(e Event) bool {
		s, ok := e.(*StateChange)
		return ok && s.State == want
	}).(*StateChange)
}

func (c *testClient) waitMessage(clientMsgID string) *Message {
	c.t.Helper()
	return c.waitFor("message "+clientMsgID, func(e Event) bool {
		m, ok := e.(*Message)
		return ok && m.ClientMsgID == clientMsgID
	}).(*Message)
}

func (c *testClient) waitStatus(clientMsgID string) *DeliveryStatus {
	c.t.Helper()
	return c.waitFor("delivery status of "+clientMsgID, func(e Event) bool {
		s, ok := e.(*DeliveryStatus)
		return ok && s.ClientMsgID == clientMsgID
	}).(*DeliveryStatus)
}

func describe(evs []Event) string {
	parts := make([]string, len(evs))
	for i, e := range evs {
		parts[i] = fmt.Sprintf("%T%+v", e, e)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

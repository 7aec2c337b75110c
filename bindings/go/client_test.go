package imchat

import (
	"context"
	"errors"
	"testing"
	"time"

	"imchat.local/imchat/imchattest"
)

func TestTwoClientsExchange(t *testing.T) {
	s := imchattest.Start(t)
	alice := connect(t, s, "alice", "", "")
	bob := connect(t, s, "bob", "", "")
	alice.waitState(StateOnline)
	bob.waitState(StateOnline)
	if id := alice.UserID(); id != "alice" {
		t.Errorf("alice.UserID() = %q", id)
	}

	id, err := alice.Send("bob", "hello bob")
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if len(id) != 32 {
		t.Errorf("client_msg_id %q: want 32 hex digits", id)
	}
	m := bob.waitMessage(id)
	if m.From != "alice" || m.To != "bob" || m.Group != "" ||
		string(m.Body) != "hello bob" || m.ContentType != "text/plain" ||
		m.ConversationID != "p:alice:bob" || m.Seq == 0 || m.MsgID == "" ||
		m.Flags&FlagOffline != 0 || m.SentAt.IsZero() {
		t.Errorf("bob received %+v", m)
	}

	ack := alice.waitFor("SendAck", func(e Event) bool {
		a, ok := e.(*SendAck)
		return ok && a.ClientMsgID == id
	}).(*SendAck)
	if ack.MsgID != m.MsgID || ack.Seq != m.Seq || ack.ConversationID != m.ConversationID {
		t.Errorf("SendAck %+v does not name the message %+v", ack, m)
	}
	st := alice.waitStatus(id)
	if st.State != Delivered || st.UserID != "bob" || st.MsgID != m.MsgID {
		t.Errorf("status %+v: want DELIVERED to bob of %s", st, m.MsgID)
	}
	if n := alice.OutboxSize(); n != 0 {
		t.Errorf("alice's outbox holds %d after DELIVERED", n)
	}

	reply, err := bob.SendMessage("alice", "", []byte{0, 1, 2, 255}, "application/octet-stream")
	if err != nil {
		t.Fatalf("SendMessage: %v", err)
	}
	r := alice.waitMessage(reply)
	if string(r.Body) != "\x00\x01\x02\xff" || r.ContentType != "application/octet-stream" ||
		r.Seq != m.Seq+1 || r.Flags&FlagGap != 0 {
		t.Errorf("alice received %+v after seq %d", r, m.Seq)
	}
	if st := bob.waitStatus(reply); st.State != Delivered || st.UserID != "alice" {
		t.Errorf("status of the reply: %+v", st)
	}
}

func TestOfflineAfterReconnect(t *testing.T) {
	s := imchattest.Start(t)
	store := t.TempDir() + "/bob.db"
	alice := connect(t, s, "alice", "", "")
	bob := connect(t, s, "bob", store, "")
	alice.waitState(StateOnline)
	bob.waitState(StateOnline)

	first, err := alice.Send("bob", "first")
	if err != nil {
		t.Fatal(err)
	}
	m1 := bob.waitMessage(first)
	alice.waitStatus(first)
	if err := bob.Close(); err != nil {
		t.Fatal(err)
	}
	for range bob.Events() { // the rest of the queue, then closed
	}
	if _, err := bob.Send("alice", "after close"); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close: %v, want ErrClosed", err)
	}

	second, err := alice.Send("bob", "while you were away")
	if err != nil {
		t.Fatal(err)
	}
	if st := alice.waitStatus(second); st.State != Stored || st.UserID != "bob" {
		t.Errorf("status while bob is offline: %+v, want STORED", st)
	}

	// The same store: the offline sync brings the second message only,
	// the first one is known to it already.
	bob2 := connect(t, s, "bob", store, "")
	m2 := bob2.waitFor("the offline message", func(e Event) bool {
		m, ok := e.(*Message)
		if ok && m.MsgID == m1.MsgID {
			t.Errorf("the message received before the restart came again: %+v", m)
		}
		return ok && m.ClientMsgID == second
	}).(*Message)
	if m2.Flags&FlagOffline == 0 || string(m2.Body) != "while you were away" ||
		m2.Seq != m1.Seq+1 {
		t.Errorf("offline message %+v (first had seq %d)", m2, m1.Seq)
	}
	for _, e := range bob2.backlog {
		if se, ok := e.(*SyncError); ok {
			t.Errorf("sync error: %v", se.Err)
		}
	}

	page, err := alice.History(context.Background(), "p:alice:bob", 0)
	if err != nil {
		t.Fatalf("History: %v", err)
	}
	if len(page.Messages) != 2 || page.Messages[0].MsgID != m1.MsgID ||
		page.Messages[1].MsgID != m2.MsgID || page.More {
		t.Errorf("history page %+v: want [%s %s]", page, m1.MsgID, m2.MsgID)
	}
	page, err = alice.History(context.Background(), "p:alice:bob", m1.Seq)
	if err != nil || len(page.Messages) != 1 || page.Messages[0].MsgID != m2.MsgID {
		t.Errorf("History after seq %d: %+v, %v", m1.Seq, page, err)
	}
}

// A store that never saw a conversation fills it from the history, once.
func TestRepairGap(t *testing.T) {
	s := imchattest.Start(t)
	alice := connect(t, s, "alice", "", "")
	bob := connect(t, s, "bob", "", "")
	alice.waitState(StateOnline)
	bob.waitState(StateOnline)
	first, err := alice.Send("bob", "delivered to the first device")
	if err != nil {
		t.Fatal(err)
	}
	m1 := bob.waitMessage(first)
	alice.waitStatus(first)

	// The device comes back with a new store: the message was pushed and
	// ACKed, so it is not in the offline inbox; only the history has it.
	bob.Close()
	fresh := connect(t, s, "bob", "", "")
	fresh.waitState(StateOnline)
	ctx := context.Background()
	if err := fresh.RepairGap(ctx, "p:alice:bob", 0); err != nil {
		t.Fatalf("RepairGap: %v", err)
	}
	if m := fresh.waitMessage(first); m.Flags&FlagHistory == 0 || m.MsgID != m1.MsgID || m.Seq != m1.Seq {
		t.Errorf("repaired %+v, want %+v with FlagHistory", m, m1)
	}
	if err := fresh.RepairGap(ctx, "p:alice:bob", 0); err != nil {
		t.Fatalf("second RepairGap: %v", err)
	}
	// Everything the repairs surfaced is queued before this push.
	second, err := alice.Send("bob", "pushed")
	if err != nil {
		t.Fatal(err)
	}
	fresh.waitFor("the pushed message", func(e Event) bool {
		m, ok := e.(*Message)
		if ok && m.MsgID == m1.MsgID {
			t.Errorf("the repaired message surfaced again: %+v", m)
		}
		return ok && m.ClientMsgID == second
	})
	if _, err := fresh.History(ctx, "p:alice:carol", 0); !errors.Is(err, ErrForbidden) {
		t.Errorf("History of another pair's conversation: %v, want ErrForbidden", err)
	}
}

func TestGroup(t *testing.T) {
	s := imchattest.Start(t)
	for _, u := range []string{"alice", "bob", "carol"} {
		s.AddMember(t, "team", u)
	}
	alice := connect(t, s, "alice", "", "")
	bob := connect(t, s, "bob", "", "")
	carol := connect(t, s, "carol", "", "")
	dave := connect(t, s, "dave", "", "")
	for _, c := range []*testClient{alice, bob, carol, dave} {
		c.waitState(StateOnline)
	}

	id, err := alice.SendGroup("team", "hi team")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*testClient{bob, carol} {
		m := c.waitMessage(id)
		if m.Group != "team" || m.To != "" || m.ConversationID != "g:team" ||
			m.From != "alice" || string(m.Body) != "hi team" {
			t.Errorf("%s received %+v", c.name, m)
		}
	}
	if st := alice.waitStatus(id); st.State != Stored || st.UserID != "" {
		t.Errorf("group status %+v: want STORED with no user", st)
	}

	refused, err := dave.SendGroup("team", "let me in")
	if err != nil {
		t.Fatal(err)
	}
	se := dave.waitFor("SendError", func(e Event) bool {
		se, ok := e.(*SendError)
		return ok && se.ClientMsgID == refused
	}).(*SendError)
	if !errors.Is(se.Err, ErrForbidden) {
		t.Errorf("non-member's group send: %v, want ErrForbidden", se.Err)
	}
	if n := dave.OutboxSize(); n != 0 {
		t.Errorf("a refused send stayed in the outbox (%d)", n)
	}
}

func TestBadToken(t *testing.T) {
	s := imchattest.Start(t)
	tok, err := SignHS256([]byte("not the server's secret"), Claims{User: "mallory"})
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t, s, "mallory", "", tok)
	st := c.waitState(StateFailed)
	if !errors.Is(st.Reason, ErrAuth) {
		t.Errorf("FAILED with reason %v, want ErrAuth", st.Reason)
	}
	if got := c.State(); got != StateFailed {
		t.Errorf("State() = %v after a 401", got)
	}
}

func TestClientArgumentErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		o    Options
		want error
	}{
		{"no address", Options{Token: "t", StorePath: ":memory:"}, ErrInvalidArgument},
		{"no token", Options{Addr: "127.0.0.1:1", StorePath: ":memory:"}, ErrInvalidArgument},
		{"no store", Options{Addr: "127.0.0.1:1", Token: "t"}, ErrInvalidArgument},
		{"store in a missing directory", Options{Addr: "127.0.0.1:1", Token: "t",
			StorePath: dir + "/missing/x.db"}, ErrIO},
		{"backoff below its start", Options{Addr: "127.0.0.1:1", Token: "t",
			StorePath: ":memory:", InitialBackoff: time.Second, MaxBackoff: time.Millisecond}, ErrInvalidArgument},
		{"page limit", Options{Addr: "127.0.0.1:1", Token: "t",
			StorePath: ":memory:", PageLimit: 5000}, ErrInvalidArgument},
		{"negative duration", Options{Addr: "127.0.0.1:1", Token: "t",
			StorePath: ":memory:", ResendInterval: -time.Second}, ErrInvalidArgument},
	} {
		c, err := NewClient(tc.o)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: NewClient: %v, want %v", tc.name, err, tc.want)
		}
		if c != nil {
			c.Close()
		}
	}

	// A client that never reaches a server still queues and validates.
	c, err := NewClient(Options{Addr: "127.0.0.1:1", Token: "t", StorePath: ":memory:"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		name      string
		to, group string
	}{
		{"invalid user id", "no spaces", ""},
		{"both recipients", "bob", "team"},
		{"no recipient", "", ""},
	} {
		if _, err := c.SendMessage(tc.to, tc.group, []byte("x"), ""); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", tc.name, err)
		}
	}
	if _, err := c.Send("bob", "queued"); err != nil {
		t.Errorf("Send while offline: %v", err)
	}
	if n := c.OutboxSize(); n != 1 {
		t.Errorf("outbox holds %d, want 1", n)
	}
	if _, err := c.History(context.Background(), "not a conversation", 0); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("History of a bad id: %v, want ErrInvalidArgument", err)
	}
	if _, err := SignHS256(nil, Claims{User: "u"}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("SignHS256 without secret: %v", err)
	}
	if _, err := SignHS256([]byte("s"), Claims{User: "bad user"}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("SignHS256 of a bad user id: %v", err)
	}
}

// The server goes away and comes back: the clients reconnect on their own,
// and a send queued meanwhile goes out after the Welcome.
func TestReconnectAfterServerRestart(t *testing.T) {
	s := imchattest.Start(t)
	alice := connect(t, s, "alice", "", "")
	bob := connect(t, s, "bob", "", "")
	alice.waitState(StateOnline)
	bob.waitState(StateOnline)

	s.Stop(t)
	alice.waitState(StateWaiting)
	bob.waitState(StateWaiting)
	queued, err := alice.Send("carol", "sent while the server was down")
	if err != nil {
		t.Fatal(err)
	}
	if n := alice.OutboxSize(); n != 1 {
		t.Errorf("outbox holds %d while offline, want 1", n)
	}

	s.Restart(t)
	alice.waitState(StateOnline)
	bob.waitState(StateOnline)
	if st := alice.waitStatus(queued); st.State != Stored || st.UserID != "carol" {
		t.Errorf("status of the queued send: %+v, want STORED for carol", st)
	}
	if n := alice.OutboxSize(); n != 0 {
		t.Errorf("outbox holds %d after STORED", n)
	}
	// bob is back online: a new message is pushed to him.
	id, err := alice.Send("bob", "after the restart")
	if err != nil {
		t.Fatal(err)
	}
	if m := bob.waitMessage(id); string(m.Body) != "after the restart" || m.Flags&FlagOffline != 0 {
		t.Errorf("bob received %+v", m)
	}
	if st := alice.waitStatus(id); st.State != Delivered {
		t.Errorf("status %+v, want DELIVERED", st)
	}
	// carol was never online: the offline sync of her first connection
	// brings the queued message (STORED means it is in her inbox).
	carol := connect(t, s, "carol", "", "")
	if m := carol.waitMessage(queued); m.Flags&FlagOffline == 0 || m.From != "alice" {
		t.Errorf("carol received %+v", m)
	}
}

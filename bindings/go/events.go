package imchat

// #include <imchat/client.h>
import "C"

import (
	"fmt"
	"time"
	"unsafe"
)

// Event is what Client.Events delivers: *Message, *SendAck,
// *DeliveryStatus, *SendError, *StateChange or *SyncError.
type Event interface {
	event()
}

// MessageFlags say where a received message came from.
type MessageFlags uint32

const (
	// FlagGap: the message's seq is above the conversation's last known
	// seq + 1 (LastSeq says where the gap starts); RepairGap fills it.
	FlagGap MessageFlags = C.IMC_CLIENT_MSG_GAP
	// FlagOffline: the message came from the offline sync.
	FlagOffline MessageFlags = C.IMC_CLIENT_MSG_OFFLINE
	// FlagHistory: the message came from a history page.
	FlagHistory MessageFlags = C.IMC_CLIENT_MSG_HISTORY
)

// Message is a message, received (Events) or read from history. To is ""
// for a group message, Group is "" for a 1:1 message.
type Message struct {
	MsgID          string
	ConversationID string
	Seq            uint64
	From           string
	FromDevice     string
	To             string
	Group          string
	Body           []byte
	ContentType    string
	SentAt         time.Time
	ClientMsgID    string
	// Set on received messages only.
	Flags   MessageFlags
	LastSeq uint64 // the conversation's highest seq known before this one
}

// SendAck: the server accepted a send; it has a msg id and a seq.
type SendAck struct {
	ClientMsgID    string
	MsgID          string
	ConversationID string
	Seq            uint64
}

// DeliveryState is the state a DeliveryStatus reports.
type DeliveryState int

const (
	// Delivered: a device of the recipient acknowledged the message.
	Delivered DeliveryState = C.IMC_DELIVERED
	// Stored: the message is durably in the recipient's offline inbox
	// (or, for a group, in the group's history).
	Stored DeliveryState = C.IMC_STORED
)

func (s DeliveryState) String() string {
	switch s {
	case Delivered:
		return "DELIVERED"
	case Stored:
		return "STORED"
	}
	return fmt.Sprintf("DeliveryState(%d)", int(s))
}

// DeliveryStatus: a send reached State; it has left the outbox. UserID
// is the recipient, "" for a group.
type DeliveryStatus struct {
	ClientMsgID string
	MsgID       string
	State       DeliveryState
	UserID      string
}

// SendError: the server refused a send for good (Err is an Error such as
// ErrForbidden or ErrTooLarge); it has left the outbox.
type SendError struct {
	ClientMsgID string
	Err         error
	Text        string // the server's message
}

// State is where the connection stands.
type State int

const (
	StateStopped    State = C.IMC_CLIENT_STOPPED
	StateConnecting State = C.IMC_CLIENT_CONNECTING
	StateHandshake  State = C.IMC_CLIENT_HANDSHAKE
	StateOnline     State = C.IMC_CLIENT_ONLINE
	StateWaiting    State = C.IMC_CLIENT_WAITING // reconnects after a backoff
	StateFailed     State = C.IMC_CLIENT_FAILED  // refused for good (401)
)

func (s State) String() string {
	switch s {
	case StateStopped:
		return "STOPPED"
	case StateConnecting:
		return "CONNECTING"
	case StateHandshake:
		return "HANDSHAKE"
	case StateOnline:
		return "ONLINE"
	case StateWaiting:
		return "WAITING"
	case StateFailed:
		return "FAILED"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// StateChange: the connection state changed. Reason is nil or the Error
// that ended a connection (ErrAuth for a 401, ErrClosed, ErrExpired for a
// handshake or heartbeat timeout, ErrProto, ErrIO).
type StateChange struct {
	State  State
	Reason error
}

// SyncError: an offline sync failed (HTTP or the page); it is tried again
// after the next reconnect.
type SyncError struct {
	Err error
}

func (*Message) event()        {}
func (*SendAck) event()        {}
func (*DeliveryStatus) event() {}
func (*SendError) event()      {}
func (*StateChange) event()    {}
func (*SyncError) event()      {}

// goMessage copies a message the library hands out (valid during the
// callback only) into Go memory.
func goMessage(m *C.imc_msg) *Message {
	var body []byte
	if m.body_len > 0 {
		body = C.GoBytes(unsafe.Pointer(m.body), C.int(m.body_len))
	}
	return &Message{
		MsgID:          C.GoString(m.msg_id),
		ConversationID: C.GoString(m.conversation_id),
		Seq:            uint64(m.seq),
		From:           C.GoString(m.from_user),
		FromDevice:     C.GoString(m.from_device),
		To:             C.GoString(m.to_user),
		Group:          C.GoString(m.group_id),
		Body:           body,
		ContentType:    C.GoString(m.content_type),
		SentAt:         time.UnixMilli(int64(m.sent_at_ms)),
		ClientMsgID:    C.GoString(m.client_msg_id),
	}
}

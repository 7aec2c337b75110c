package imchat

// The functions libimchat calls back (through the trampolines of
// callbacks.c). Each receives the runtime/cgo.Handle of its Go object as
// an integer and runs on the goroutine that made the C call.

// #include <stdint.h>
// #include <imchat/client.h>
import "C"

import "runtime/cgo"

//export imcgoState
func imcgoState(h C.uintptr_t, state C.imc_client_state, reason C.int) {
	cgo.Handle(h).Value().(*loop).onState(State(state), codeErr(reason))
}

//export imcgoMessage
func imcgoMessage(h C.uintptr_t, m *C.imc_msg, flags C.uint32_t, lastSeq C.uint64_t) {
	msg := goMessage(m)
	msg.Flags = MessageFlags(flags)
	msg.LastSeq = uint64(lastSeq)
	cgo.Handle(h).Value().(*loop).emit(msg)
}

//export imcgoSendAck
func imcgoSendAck(h C.uintptr_t, clientMsgID, msgID, convID *C.char, seq C.uint64_t) {
	cgo.Handle(h).Value().(*loop).emit(&SendAck{
		ClientMsgID:    C.GoString(clientMsgID),
		MsgID:          C.GoString(msgID),
		ConversationID: C.GoString(convID),
		Seq:            uint64(seq),
	})
}

//export imcgoStatus
func imcgoStatus(h C.uintptr_t, clientMsgID, msgID *C.char, state C.imc_delivery_state, userID *C.char) {
	cgo.Handle(h).Value().(*loop).emit(&DeliveryStatus{
		ClientMsgID: C.GoString(clientMsgID),
		MsgID:       C.GoString(msgID),
		State:       DeliveryState(state),
		UserID:      C.GoString(userID),
	})
}

//export imcgoSendError
func imcgoSendError(h C.uintptr_t, clientMsgID *C.char, code C.int, text *C.char) {
	cgo.Handle(h).Value().(*loop).emit(&SendError{
		ClientMsgID: C.GoString(clientMsgID),
		Err:         codeErr(code),
		Text:        C.GoString(text),
	})
}

//export imcgoLog
func imcgoLog(h C.uintptr_t, level C.imc_log_level, line *C.char) {
	cgo.Handle(h).Value().(*loop).log(LogLevel(level), C.GoString(line))
}

//export imcgoHistory
func imcgoHistory(h C.uintptr_t, m *C.imc_msg) {
	page := cgo.Handle(h).Value().(*[]Message)
	*page = append(*page, *goMessage(m))
}

package server

// #include <stdint.h>
// #include <imchat/common.h>
import "C"

import (
	"runtime/cgo"

	"imchat.local/imchat"
)

//export imcgoServerLog
func imcgoServerLog(h C.uintptr_t, level C.imc_log_level, line *C.char) {
	cgo.Handle(h).Value().(func(imchat.LogLevel, string))(imchat.LogLevel(level), C.GoString(line))
}

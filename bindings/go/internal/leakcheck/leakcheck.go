// Package leakcheck runs LeakSanitizer's check on demand, in a program
// linked with -fsanitize=address (a Go program never runs the check
// LeakSanitizer installs at exit: it leaves through exit_group).
package leakcheck

/*
extern int __lsan_do_recoverable_leak_check(void) __attribute__((weak));
static int leak_check(void) {
  return __lsan_do_recoverable_leak_check ? __lsan_do_recoverable_leak_check()
                                          : -1;
}
*/
import "C"

// Run reports leaks to stderr and returns 1 if there were any, 0 if
// none, -1 if the program has no LeakSanitizer.
func Run() int {
	return int(C.leak_check())
}

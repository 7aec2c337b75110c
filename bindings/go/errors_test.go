package imchat

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The sentinels cover every code of <imchat/common.h>: a code added there
// fails this test until errors.go has it.
func TestErrorsMatchHeader(t *testing.T) {
	src, err := os.ReadFile("../../include/imchat/common.h")
	if err != nil {
		t.Fatalf("reading common.h: %v", err)
	}
	re := regexp.MustCompile(`\b(IMC_ERR_[A-Z_]+)\s*=\s*(-\d+)`)
	found := re.FindAllStringSubmatch(string(src), -1)
	if len(found) < 10 {
		t.Fatalf("only %d IMC_ERR_* codes found in common.h", len(found))
	}
	want := map[Error]string{}
	for _, m := range found {
		if m[1] == "IMC_ERR_FATAL" { // a threshold, never returned
			continue
		}
		code, _ := strconv.Atoi(m[2])
		want[Error{code}] = m[1]
		if got, ok := errorNames[Error{code}]; !ok || got != m[1] {
			t.Errorf("%s = %d: errors.go has %q", m[1], code, got)
		}
	}
	for e, name := range errorNames {
		if want[e] != name {
			t.Errorf("errors.go: %s = %d is not in common.h", name, e.Code)
		}
	}
}

func TestErrorValues(t *testing.T) {
	texts := map[string]string{}
	for e, name := range errorNames {
		text := e.Text()
		if text == "" || !strings.Contains(e.Error(), text) || !strings.Contains(e.Error(), name) {
			t.Errorf("%s: Error() %q, Text() %q", name, e.Error(), text)
		}
		if other, dup := texts[text]; dup {
			t.Errorf("%s and %s share the text %q", name, other, text)
		}
		texts[text] = name
		wrapped := fmt.Errorf("context: %w", Error{e.Code})
		if !errors.Is(wrapped, e) {
			t.Errorf("errors.Is does not match a wrapped %s", name)
		}
		var as Error
		if !errors.As(wrapped, &as) || as.Code != e.Code {
			t.Errorf("errors.As of a wrapped %s: %+v", name, as)
		}
	}
	if errors.Is(ErrAuth, ErrExpired) {
		t.Error("ErrAuth matches ErrExpired")
	}
	if !ErrInternal.Fatal() || !ErrCallbackFailure.Fatal() || ErrAuth.Fatal() {
		t.Error("Fatal() disagrees with imc_err_is_fatal's threshold")
	}
	if codeErr(0) != nil || codeErr(3) != nil {
		t.Error("codeErr of a non-negative value is an error")
	}
	if got := (Error{-1}).Error(); !strings.Contains(got, "code -1") {
		t.Errorf("unknown code: %q", got)
	}
}

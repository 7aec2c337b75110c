package imchat

import (
	"os"
	"testing"

	"imchat.local/imchat/internal/leakcheck"
)

func TestMain(m *testing.M) {
	rc := m.Run()
	if rc == 0 && os.Getenv("IMC_GO_LEAK_CHECK") == "1" {
		switch leakcheck.Run() {
		case 1:
			rc = 1
		case -1:
			os.Stderr.WriteString("IMC_GO_LEAK_CHECK=1 but the program has no LeakSanitizer\n")
			rc = 1
		}
	}
	os.Exit(rc)
}

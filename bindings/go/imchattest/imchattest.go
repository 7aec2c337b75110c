// Package imchattest runs a real imchatd for tests: on loopback, with its
// own data directory, a known HS256 secret and admin token, stopped when
// the test ends. The imchatd binary is named by the environment variable
// IMCHATD (meson's test environment sets it).
package imchattest

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// Secret is the HS256 secret the server accepts tokens signed with.
	Secret = "imchattest-secret-0123456789abcdef"
	// AdminToken is the bearer token of the server's admin API.
	AdminToken = "imchattest-admin-token"

	startTimeout = 15 * time.Second
)

var (
	listenRE    = regexp.MustCompile(`listening on (127\.0\.0\.1:\d+)`)
	sanitizerRE = regexp.MustCompile(`ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:`)
)

// Server is an imchatd process.
type Server struct {
	Addr    string // 127.0.0.1:PORT
	bin     string
	dataDir string
	extra   []string

	cmd  *exec.Cmd
	eof  chan struct{} // closed when the process's stderr ends
	mu   sync.Mutex
	logs []string
}

// Start starts imchatd with Secret and AdminToken (and extra flags) and
// stops it when the test ends. Stopping fails the test if the server did
// not exit cleanly or logged a sanitizer report; a failed test shows the
// server's log.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	bin := os.Getenv("IMCHATD")
	if bin == "" {
		t.Fatal("IMCHATD is not set: run the tests through `meson test --suite go` (see bindings/go/README.md)")
	}
	s := &Server{bin: bin, dataDir: t.TempDir(), extra: extra}
	s.launch(t, "127.0.0.1:0")
	t.Cleanup(func() {
		s.Stop(t)
		if t.Failed() {
			t.Logf("imchatd's log:\n%s", s.Log())
		}
	})
	return s
}

// Restart stops the server and starts it again on the same address and
// data directory.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop(t)
	s.launch(t, s.Addr)
}

// launch starts the process and waits until /healthz answers.
func (s *Server) launch(t testing.TB, listen string) {
	t.Helper()
	cmd := exec.Command(s.bin, "--listen", listen, "--data-dir", s.dataDir,
		"--jwt-secret", Secret, "--admin-token", AdminToken,
		"--node-id", "imchattest")
	cmd.Args = append(cmd.Args, s.extra...)
	// If the test process dies, the kernel kills the server.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", s.bin, err)
	}
	s.cmd, s.eof = cmd, make(chan struct{})
	addr := make(chan string, 1)
	go func(eof chan struct{}) {
		defer close(eof)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.logs = append(s.logs, line)
			s.mu.Unlock()
			if m := listenRE.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
	}(s.eof)
	select {
	case s.Addr = <-addr:
	case <-s.eof:
		t.Fatalf("imchatd exited before listening:\n%s", s.Log())
	case <-time.After(startTimeout):
		t.Fatalf("imchatd did not log 'listening on' within %v:\n%s", startTimeout, s.Log())
	}
	deadline := time.Now().Add(startTimeout)
	for {
		r, err := http.Get("http://" + s.Addr + "/healthz")
		if err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("imchatd: /healthz did not answer 200 within %v:\n%s", startTimeout, s.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Log is what the server wrote to stderr so far (over restarts).
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.logs, "\n")
}

// Stop sends SIGTERM and waits for the exit; a no-op when stopped.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.cmd == nil {
		return
	}
	cmd, eof := s.cmd, s.eof
	s.cmd = nil
	cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() {
		<-eof
		exited <- cmd.Wait()
	}()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("imchatd exited with %v:\n%s", err, s.Log())
		}
	case <-time.After(startTimeout):
		cmd.Process.Kill()
		<-exited
		t.Errorf("imchatd did not stop within %v of SIGTERM", startTimeout)
	}
	if sanitizerRE.MatchString(s.Log()) {
		t.Errorf("imchatd reported a sanitizer error:\n%s", s.Log())
	}
}

// AddMember puts user into group through the admin API.
func (s *Server) AddMember(t testing.TB, group, user string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut,
		fmt.Sprintf("http://%s/v1/groups/%s/members/%s", s.Addr, group, user), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+AdminToken)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode/100 != 2 {
		t.Fatalf("PUT group member %s/%s: %s", group, user, r.Status)
	}
}

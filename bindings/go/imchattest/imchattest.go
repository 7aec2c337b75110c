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

// Server is a running imchatd.
type Server struct {
	Addr string // 127.0.0.1:PORT
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []string
	eof  chan struct{}
}

// Start starts imchatd with Secret and AdminToken (and extra flags) and
// stops it (SIGTERM) when the test ends, failing the test if it did not
// exit cleanly or logged a sanitizer report.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	bin := os.Getenv("IMCHATD")
	if bin == "" {
		t.Fatal("IMCHATD is not set: run the tests through `meson test --suite go` (see bindings/go/README.md)")
	}
	s := &Server{eof: make(chan struct{})}
	s.cmd = exec.Command(bin, "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--jwt-secret", Secret, "--admin-token", AdminToken,
		"--node-id", "imchattest")
	s.cmd.Args = append(s.cmd.Args, extra...)
	// If the test process dies, the kernel kills the server.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	addr := make(chan string, 1)
	go func() {
		defer close(s.eof)
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
	}()
	t.Cleanup(func() { s.stop(t) })
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
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("imchatd: /healthz did not answer 200 within %v:\n%s", startTimeout, s.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Log is what the server wrote to stderr so far.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.logs, "\n")
}

func (s *Server) stop(t testing.TB) {
	s.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() {
		<-s.eof
		exited <- s.cmd.Wait()
	}()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("imchatd exited with %v:\n%s", err, s.Log())
		}
	case <-time.After(startTimeout):
		s.cmd.Process.Kill()
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

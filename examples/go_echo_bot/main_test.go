package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"imchat.local/imchat"
	"imchat.local/imchat/imchattest"
)

// The test binary doubles as the bot: with GO_ECHO_BOT_RUN=1 it runs
// main, so the test drives the real program as a separate process.
func TestMain(m *testing.M) {
	if os.Getenv("GO_ECHO_BOT_RUN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const waitTimeout = 15 * time.Second

// syncBuffer collects a process's stderr while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startBot runs the bot with args; the caller stops it.
func startBot(t *testing.T, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "GO_ECHO_BOT_RUN=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, out
}

// waitExit waits for the bot to end and returns how it ended.
func waitExit(t *testing.T, cmd *exec.Cmd, out *syncBuffer) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(waitTimeout):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the bot did not exit within %v:\n%s", waitTimeout, out)
		return nil
	}
}

// user connects a client of name and returns it with a function that
// waits for a message from echo-bot.
func user(t *testing.T, s *imchattest.Server, name string) (*imchat.Client, func() *imchat.Message) {
	t.Helper()
	tok, err := imchat.SignHS256([]byte(imchattest.Secret), imchat.Claims{User: name})
	if err != nil {
		t.Fatal(err)
	}
	c, err := imchat.NewClient(imchat.Options{Addr: s.Addr, Token: tok,
		StorePath: filepath.Join(t.TempDir(), name+".db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, func() *imchat.Message {
		t.Helper()
		timeout := time.After(waitTimeout)
		for {
			select {
			case e := <-c.Events():
				if m, ok := e.(*imchat.Message); ok && m.From == botUser {
					return m
				}
			case <-timeout:
				t.Fatalf("%s: no message from %s within %v", name, botUser, waitTimeout)
			}
		}
	}
}

func TestEchoesToSender(t *testing.T) {
	s := imchattest.Start(t)
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(imchattest.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bot, out := startBot(t, "-addr", s.Addr, "-secret-file", secretFile,
		"-store", filepath.Join(dir, "bot.db"))

	alice, aliceGot := user(t, s, "alice")
	bob, bobGot := user(t, s, "bob")
	if _, err := alice.Send(botUser, "ping from alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.SendMessage(botUser, "", []byte{1, 2, 3}, "application/octet-stream"); err != nil {
		t.Fatal(err)
	}
	if m := aliceGot(); string(m.Body) != "ping from alice" || m.To != "alice" ||
		m.ContentType != "text/plain" {
		t.Errorf("alice got %+v", m)
	}
	if m := bobGot(); !bytes.Equal(m.Body, []byte{1, 2, 3}) || m.To != "bob" ||
		m.ContentType != "application/octet-stream" {
		t.Errorf("bob got %+v", m)
	}

	bot.Process.Signal(syscall.SIGTERM)
	if err := waitExit(t, bot, out); err != nil {
		t.Errorf("the bot exited with %v:\n%s", err, out)
	}
	if log := out.String(); strings.Count(log, "echoed") != 2 {
		t.Errorf("the bot's log does not show two echoes:\n%s", log)
	}
}

func TestRefusedToken(t *testing.T) {
	s := imchattest.Start(t)
	bot, out := startBot(t, "-addr", s.Addr, "-token", "not.a.token",
		"-store", filepath.Join(t.TempDir(), "bot.db"))
	err := waitExit(t, bot, out)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 ||
		!strings.Contains(out.String(), "refused by the server") {
		t.Errorf("bot with a bad token: %v\n%s", err, out)
	}
}

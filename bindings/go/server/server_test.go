package server

import (
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"imchat.local/imchat"
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

const (
	secret      = "go-server-test-secret-0123456789"
	waitTimeout = 15 * time.Second
)

// lines collects log lines; the hook runs on the server's thread.
type lines struct {
	mu sync.Mutex
	l  []string
}

func (l *lines) add(level imchat.LogLevel, line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.l = append(l.l, line)
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.l, "\n")
}

func flags(t *testing.T, extra ...string) []string {
	return append([]string{"--listen", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--jwt-secret", secret}, extra...)
}

func client(t *testing.T, srv *Server, user string) *imchat.Client {
	t.Helper()
	tok, err := imchat.SignHS256([]byte(secret), imchat.Claims{User: user})
	if err != nil {
		t.Fatal(err)
	}
	c, err := imchat.NewClient(imchat.Options{Addr: srv.Address(), Token: tok,
		StorePath: t.TempDir() + "/" + user + ".db"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// next returns the first event of c that match accepts, within waitTimeout.
func next(t *testing.T, c *imchat.Client, what string, match func(imchat.Event) bool) imchat.Event {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case e := <-c.Events():
			if match(e) {
				return e
			}
		case <-timeout:
			t.Fatalf("no %s within %v", what, waitTimeout)
		}
	}
}

func online(e imchat.Event) bool {
	s, ok := e.(*imchat.StateChange)
	return ok && s.State == imchat.StateOnline
}

func TestClientsThroughInProcessServer(t *testing.T) {
	log := &lines{}
	srv, err := Start(Config{Flags: flags(t, "--log-level", "debug"), Log: log.add})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(srv.Address(), "127.0.0.1:") || strings.HasSuffix(srv.Address(), ":0") {
		t.Errorf("Address() = %q", srv.Address())
	}
	alice, bob := client(t, srv, "alice"), client(t, srv, "bob")
	next(t, alice, "alice online", online)
	next(t, bob, "bob online", online)
	id, err := alice.Send("bob", "in one process")
	if err != nil {
		t.Fatal(err)
	}
	m := next(t, bob, "the message", func(e imchat.Event) bool {
		m, ok := e.(*imchat.Message)
		return ok && m.ClientMsgID == id
	}).(*imchat.Message)
	if string(m.Body) != "in one process" || m.From != "alice" {
		t.Errorf("bob received %+v", m)
	}
	st := next(t, alice, "the status", func(e imchat.Event) bool {
		s, ok := e.(*imchat.DeliveryStatus)
		return ok && s.ClientMsgID == id
	}).(*imchat.DeliveryStatus)
	if st.State != imchat.Delivered {
		t.Errorf("status %+v", st)
	}

	srv.Reload()
	if err := srv.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	// The clients see the graceful close.
	s := next(t, bob, "bob's WAITING", func(e imchat.Event) bool {
		s, ok := e.(*imchat.StateChange)
		return ok && s.State == imchat.StateWaiting
	}).(*imchat.StateChange)
	if !errors.Is(s.Reason, imchat.ErrClosed) {
		t.Errorf("bob's connection ended with %v, want ErrClosed", s.Reason)
	}
	if err := srv.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	for _, want := range []string{"alice/default connected", "reloading", "stopped"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("the log hook did not get %q:\n%s", want, log)
		}
	}
}

func TestTwoServersInOneProcess(t *testing.T) {
	a, err := Start(Config{Flags: flags(t), Log: (&lines{}).add})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Start(Config{Flags: flags(t), Log: (&lines{}).add})
	if err != nil {
		a.Stop()
		t.Fatal(err)
	}
	if a.Address() == b.Address() {
		t.Errorf("both servers on %s", a.Address())
	}
	for _, srv := range []*Server{a, b} {
		next(t, client(t, srv, "carol"), "online on "+srv.Address(), online)
	}
	if err := a.Stop(); err != nil {
		t.Error(err)
	}
	if err := b.Stop(); err != nil {
		t.Error(err)
	}
}

func TestStartErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name  string
		flags []string
		want  error
	}{
		{"unknown flag", []string{"--no-such-flag"}, imchat.ErrInvalidArgument},
		{"token subcommand", []string{"token", "alice"}, imchat.ErrInvalidArgument},
		{"bad listen", flags(t, "--listen", "not-an-address"), imchat.ErrInvalidArgument},
		{"address in use", flags(t, "--listen", busy.Addr().String()), imchat.ErrIO},
		{"missing secret file", flags(t, "--jwt-secret-file", t.TempDir()+"/none"), imchat.ErrInvalidArgument},
	} {
		srv, err := Start(Config{Flags: tc.flags, Log: (&lines{}).add})
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if err != nil && !strings.Contains(err.Error(), "imchat server: ") {
			t.Errorf("%s: %q does not give the reason", tc.name, err)
		}
		if srv != nil {
			srv.Stop()
		}
	}
}

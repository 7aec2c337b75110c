// go_echo_bot connects to an imchat gateway as user echo-bot and sends
// every 1:1 message it receives back to its sender (same body, same
// content type).
//
//	go_echo_bot -addr 127.0.0.1:8082 -secret-file DATA_DIR/jwt.secret
//	go_echo_bot -addr 127.0.0.1:8082 -token "$(imchatd token echo-bot)"
//
// It runs until SIGINT or SIGTERM. Its store (-store, default
// echo-bot.db) keeps what it has answered, so a restart answers each
// message once.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"imchat.local/imchat"
)

const botUser = "echo-bot"

func main() {
	addr := flag.String("addr", "127.0.0.1:8082", "gateway `host:port`")
	token := flag.String("token", "", "bearer `JWT` for user "+botUser)
	secretFile := flag.String("secret-file", "", "sign a token with the HS256 secret in `FILE` instead")
	store := flag.String("store", "echo-bot.db", "SQLite `file` of the client's store")
	flag.Parse()

	tok, err := botToken(*token, *secretFile)
	if err != nil {
		log.Fatal(err)
	}
	c, err := imchat.NewClient(imchat.Options{Addr: *addr, Token: tok, StorePath: *store})
	if err != nil {
		log.Fatal(err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		c.Close() // ends the loop below once the events are read
	}()
	if err := serve(c); err != nil {
		c.Close()
		log.Fatal(err)
	}
}

// botToken is the -token flag, or a token signed with the secret file.
func botToken(token, secretFile string) (string, error) {
	if (token == "") == (secretFile == "") {
		return "", errors.New("give exactly one of -token and -secret-file")
	}
	if token != "" {
		return token, nil
	}
	secret, err := os.ReadFile(secretFile)
	if err != nil {
		return "", err
	}
	return imchat.SignHS256([]byte(strings.TrimRight(string(secret), " \t\r\n")),
		imchat.Claims{User: botUser, Device: "bot"})
}

// serve answers every message until the client is closed. It fails if
// the server refuses the bot's token.
func serve(c *imchat.Client) error {
	for ev := range c.Events() {
		switch e := ev.(type) {
		case *imchat.Message:
			if e.Group != "" || e.From == botUser {
				continue // answer people, in private
			}
			if _, err := c.SendMessage(e.From, "", e.Body, e.ContentType); err != nil {
				if errors.Is(err, imchat.ErrClosed) {
					continue // closing: the rest of the queue is dropped
				}
				return fmt.Errorf("echo to %s: %w", e.From, err)
			}
			log.Printf("echoed %d bytes to %s", len(e.Body), e.From)
		case *imchat.StateChange:
			log.Printf("state %v", e.State)
			if e.State == imchat.StateFailed {
				return fmt.Errorf("refused by the server: %w", e.Reason)
			}
		case *imchat.SendError:
			log.Printf("echo %s refused: %v (%s)", e.ClientMsgID, e.Err, e.Text)
		case *imchat.SyncError:
			log.Printf("%v", e.Err)
		}
	}
	return nil
}

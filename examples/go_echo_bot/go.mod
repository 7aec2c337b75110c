module imchat.local/go_echo_bot

go 1.19

require imchat.local/imchat v0.0.0

replace imchat.local/imchat => ../../bindings/go

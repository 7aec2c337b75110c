module imchat.local/imchat

go 1.19

#!/usr/bin/python3
"""An echo bot on the Python binding: connects to an imchat server as user
echo-bot and sends every message it receives back to its sender.

    python3 examples/python_echo_bot.py 127.0.0.1:8082 --secret SECRET
    python3 examples/python_echo_bot.py 127.0.0.1:8082 --token JWT

--secret signs a token for echo-bot with the server's HS256 secret;
--token uses one made elsewhere (imchatd token echo-bot ...). Messages
that arrive while the bot is away are fetched by the offline sync when it
connects; --store FILE keeps its state (outbox, seen messages, sync
cursor) across restarts. Stops on Ctrl-C or SIGTERM.

Run from the source tree it finds the package in bindings/python and the
library through IMCHAT_LIB (e.g. IMCHAT_LIB=build/libimchat/libimchat.so).
"""

import argparse
import os
import signal
import sys

try:
    import imchat
except ImportError:  # run from the source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(
        __file__)), "..", "bindings", "python"))
    import imchat

USER = "echo-bot"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("server", help="HOST:PORT of the gateway")
    key = ap.add_mutually_exclusive_group(required=True)
    key.add_argument("--secret", help="the server's HS256 secret")
    key.add_argument("--token", help="a JWT for user echo-bot")
    ap.add_argument("--store", default=":memory:",
                    help="the client's SQLite file (default: in memory)")
    args = ap.parse_args()

    token = args.token or imchat.sign_token(args.secret, USER)
    with imchat.Client(args.server, token, store=args.store) as bot:
        # SIGTERM and Ctrl-C stop the client; messages() then ends.
        def stop(signum, frame):
            bot.stop()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

        bot.connect()
        print("%s online at %s" % (bot.user_id, args.server), flush=True)
        for msg in bot.messages():
            if msg.from_user == USER:
                continue
            bot.send(msg.from_user, msg.body, content_type=msg.content_type)
            print("echoed %d bytes to %s" % (len(msg.body), msg.from_user),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""End-to-end test of examples/chat_http_server.c, a plain HTTP server on
its own epoll loop that gains chat by linking libimchat: its own pages
(GET /, GET /time) still work, two users chat through /ws (pushed message,
DeliverAck, DELIVERED tick), a message for an offline user is stored and
fetched from GET /offline through the same port, a group message reaches
the other member (the admin API and the group fan-out), and SIGINT closes
the WebSockets with 1001 and exits 0 (clean under ASan).

Run: IMCHATD=build/hosts/imchatd IMC_CHAT_EXAMPLE=build/examples/chat_http_server \
     IMC_PROTO_DIR=proto/imchat/v1 /usr/bin/python3 tests/e2e/test_example_chat.py
"""

import asyncio
import atexit
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import websockets  # noqa: E402

import imctest  # noqa: E402
from imctest import (IO_TIMEOUT, expect_close, http_get, http_raw,  # noqa
                     mkdtemp, recv_frame, send_frame, welcome)

EXAMPLE = os.environ.get("IMC_CHAT_EXAMPLE", "")
ADMIN = "example-admin-token"
_LISTEN_RE = re.compile(r"^chat_http_server: listening on 127\.0\.0\.1:(\d+)$")
_TOKEN_RE = re.compile(r"^token for (\w+): (\S+)$")
_SANITIZER_RE = re.compile(
    r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:")


def pb():
    return imctest.pb()


def _pdeathsig():
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_running = []


@atexit.register
def _kill_running():
    for p in _running:
        if p.poll() is None:
            p.kill()  # by pid


class Example:
    """One chat_http_server on a free port with its own database."""

    def __init__(self):
        if not os.access(EXAMPLE, os.X_OK):
            sys.exit("test_example_chat: IMC_CHAT_EXAMPLE=%r is not an "
                     "executable (run through `meson test`)" % EXAMPLE)
        db = os.path.join(mkdtemp("chat-example"), "chat.db")
        env = dict(os.environ, CHAT_ADMIN_TOKEN=ADMIN)
        self.proc = subprocess.Popen(
            [EXAMPLE, "0", db], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env, preexec_fn=_pdeathsig)
        _running.append(self.proc)
        self.err = []
        self.reader = threading.Thread(target=self._read_err, daemon=True)
        self.reader.start()
        self.tokens = {}
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise AssertionError("no 'listening on' line; exit status "
                                     "%s\n%s" % (self.proc.poll(),
                                                 "\n".join(self.err)))
            m = _TOKEN_RE.match(line.strip())
            if m:
                self.tokens[m.group(1)] = m.group(2)
            m = _LISTEN_RE.match(line.strip())
            if m:
                self.port = int(m.group(1))
                break

    def _read_err(self):
        for line in self.proc.stderr:
            self.err.append(line.rstrip("\n"))

    def connect(self, user):
        return websockets.connect(
            "ws://127.0.0.1:%d/ws" % self.port,
            extra_headers={"Authorization": "Bearer " + self.tokens[user]},
            compression=None, ping_interval=None, open_timeout=IO_TIMEOUT,
            close_timeout=IO_TIMEOUT)


async def next_push(ws, kind):
    """The next frame pushed (id 0) with body kind; others are skipped."""
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        f = await recv_frame(ws, max(deadline - time.monotonic(), 0.01))
        if f.id == 0 and f.WhichOneof("body") == kind:
            return f


async def send(ws, fid, to=None, group=None, body=b"", cmid=None):
    """Sends a message as frame fid; returns its SendAck."""
    f = pb().ClientFrame(id=fid)
    f.send.client_msg_id = cmid or "c%d" % fid
    if group:
        f.send.group_id = group
    else:
        f.send.user_id = to
    f.send.body = body
    f.send.content_type = "text/plain"
    await send_frame(ws, f)
    while True:
        r = await recv_frame(ws)
        if r.id == fid:
            if r.WhichOneof("body") != "send_ack":
                raise AssertionError("send answered %s" % r)
            return r.send_ack


class TestChatHttpServer(imctest.AsyncTestCase):

    async def test_pages_chat_offline_groups_and_sigint(self):
        ex = Example()
        try:
            await self.run_scenario(ex)
        except BaseException:
            sys.stderr.write("--- chat_http_server stderr ---\n%s\n"
                             % "\n".join(ex.err))
            raise

    async def run_scenario(self, ex):
        self.assertEqual(set(ex.tokens), {"alice", "bob"})

        # The server's own pages, next to the chat.
        r = http_get(ex.port, "/")
        self.assertEqual(r.status, 200, r)
        self.assertIn(b"Hello from a plain HTTP server", r.body)
        r = http_get(ex.port, "/time")
        self.assertEqual(r.status, 200, r)
        self.assertLess(abs(int(r.body) - time.time()), 60)
        self.assertEqual(http_get(ex.port, "/nope").status, 404)
        r = http_raw(ex.port, "POST /time HTTP/1.1\r\nHost: x\r\n"
                              "Content-Length: 0\r\n\r\n")
        self.assertEqual(r.status, 405, r)

        # Live chat through /ws.
        async with ex.connect("alice") as alice, ex.connect("bob") as bob:
            self.assertEqual((await welcome(alice)).welcome.user_id, "alice")
            self.assertEqual((await welcome(bob)).welcome.user_id, "bob")
            ack = await send(alice, 1, to="bob", body=b"hi bob")
            self.assertEqual(ack.conversation_id, "p:alice:bob")
            m = (await next_push(bob, "deliver")).deliver.message
            self.assertEqual((m.from_user, m.body, m.msg_id),
                             ("alice", b"hi bob", ack.msg_id))
            f = pb().ClientFrame(id=1)
            f.deliver_ack.msg_ids.append(m.msg_id)
            await send_frame(bob, f)
            st = (await next_push(alice, "status")).status
            self.assertEqual((st.msg_id, st.state, st.user_id),
                             (ack.msg_id, pb().DeliveryStatus.DELIVERED,
                              "bob"))
            ack = await send(bob, 2, to="alice", body=b"hi alice")
            m = (await next_push(alice, "deliver")).deliver.message
            self.assertEqual((m.from_user, m.body), ("bob", b"hi alice"))

        # bob is gone: the message is stored, and GET /offline on the same
        # port (handed to the gateway and the API) returns it.
        async with ex.connect("alice") as alice:
            await welcome(alice)
            ack = await send(alice, 1, to="bob", body=b"while away",
                             cmid="away-1")
            st = (await next_push(alice, "status")).status
            self.assertEqual((st.msg_id, st.state),
                             (ack.msg_id, pb().DeliveryStatus.STORED))
        r = http_get(ex.port, "/offline?cursor=0&limit=10",
                     headers={"Authorization": "Bearer " + ex.tokens["bob"]})
        self.assertEqual(r.status, 200, r)
        msgs = r.json()["messages"]
        self.assertIn(ack.msg_id, [x["msg_id"] for x in msgs], msgs)

        # A group: members through the admin API, messages through the
        # fan-out on the group bus.
        for user in ("alice", "bob"):
            r = http_raw(ex.port,
                         "PUT /v1/groups/team/members/%s HTTP/1.1\r\n"
                         "Host: x\r\nAuthorization: Bearer %s\r\n"
                         "Content-Length: 0\r\nConnection: close\r\n\r\n"
                         % (user, ADMIN))
            self.assertEqual(r.status, 200, r)
            self.assertEqual(json.loads(r.body)["member"], True)
        async with ex.connect("alice") as alice, ex.connect("bob") as bob:
            await welcome(alice)
            await welcome(bob)
            ack = await send(alice, 3, group="team", body=b"hi team",
                             cmid="team-1")
            self.assertEqual(ack.conversation_id, "g:team")
            m = (await next_push(bob, "deliver")).deliver.message
            self.assertEqual((m.group_id, m.from_user, m.body),
                             ("team", "alice", b"hi team"))

            # SIGINT: the WebSockets are closed with 1001, the process
            # exits 0.
            ex.proc.send_signal(signal.SIGINT)
            code, _ = await expect_close(bob)
            self.assertEqual(code, 1001)
        rc = await asyncio.get_running_loop().run_in_executor(
            None, ex.proc.wait, IO_TIMEOUT)
        ex.reader.join(IO_TIMEOUT)  # the last lines of stderr
        err = "\n".join(ex.err)
        self.assertEqual(rc, 0, err)
        self.assertIsNone(_SANITIZER_RE.search(err), err)


if __name__ == "__main__":
    imctest.main()

#!/usr/bin/python3
"""Smoke test of examples/echo_server.c, the host a new user copies from:
it must start, accept the token it prints, answer a SendRequest with a
SendAck and echo the message back as a Deliver, report the DeliverAck, and
on SIGINT close the WebSocket with 1001 and exit 0 (clean under ASan).

Run: IMCHATD=build/hosts/imchatd IMC_EXAMPLE=build/examples/echo_server \
     IMC_PROTO_DIR=proto/imchat/v1 /usr/bin/python3 tests/e2e/test_example.py
"""

import asyncio
import atexit
import ctypes
import hashlib
import hmac
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import websockets  # noqa: E402

import imctest  # noqa: E402
from imctest import (IO_TIMEOUT, b64url, expect_close, http_raw,  # noqa
                     jwt_parts, recv_frame, recv_reply, send_frame,
                     sign_hs256, upgrade_request, welcome)

EXAMPLE = os.environ.get("IMC_EXAMPLE", "")
DEFAULT_SECRET = "example-secret"
STOP_TIMEOUT = 10.0  # s: SIGINT to exit (the example drains for at most 3 s)

_LISTEN_RE = re.compile(r"^echo_server: listening on 127\.0\.0\.1:(\d+)$")
_TOKEN_RE = re.compile(r"^token for alice \(.*\): (\S+)$")
_URL_RE = re.compile(r"^connect to (ws://\S+)$")
_SANITIZER_RE = re.compile(
    r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:")


def pb():
    return imctest.pb()


def _pdeathsig():
    # The example dies with the test runner, however the runner ends.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_running = []


@atexit.register
def _kill_running():
    for ex in _running:
        ex.kill()


class Example:
    """One echo_server on 127.0.0.1:<free port>; its output is collected."""

    def __init__(self, *args):
        if not os.access(EXAMPLE, os.X_OK):
            sys.exit("test_example: IMC_EXAMPLE=%r is not an executable "
                     "(run through `meson test`)" % EXAMPLE)
        self.args = [EXAMPLE, "0"] + list(args)
        self.out, self.err = [], []
        self._cv = threading.Condition()
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, preexec_fn=_pdeathsig)
        _running.append(self)
        self._readers = [
            threading.Thread(target=self._read, args=(p, lines), daemon=True)
            for p, lines in ((self.proc.stdout, self.out),
                             (self.proc.stderr, self.err))]
        for t in self._readers:
            t.start()
        self.port = int(self.wait_line(_LISTEN_RE).group(1))
        self.token = self.wait_line(_TOKEN_RE).group(1)
        self.url = self.wait_line(_URL_RE).group(1)

    def _read(self, pipe, lines):
        for raw in pipe:
            with self._cv:
                lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cv.notify_all()

    def text(self):
        with self._cv:
            return ("command: %s\n--- stdout ---\n%s\n--- stderr ---\n%s\n"
                    "--- end ---" % (" ".join(self.args), "\n".join(self.out),
                                     "\n".join(self.err)))

    def wait_line(self, regex, timeout=IO_TIMEOUT):
        """The match of the first stdout line matching regex (blocks)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for line in self.out:
                    m = regex.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if self.proc.poll() is not None or left <= 0:
                    break
                self._cv.wait(min(left, 0.1))
        raise AssertionError("no stdout line matching %r (exit status %s)\n%s"
                             % (regex.pattern, self.proc.poll(), self.text()))

    async def await_line(self, regex):
        return await asyncio.get_running_loop().run_in_executor(
            None, self.wait_line, regex)

    async def await_exit(self):
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, self.proc.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("still running %.0f s after SIGINT\n%s"
                                 % (STOP_TIMEOUT, self.text()))

    def check_clean_exit(self, rc):
        for t in self._readers:
            t.join(timeout=2)
        if rc != 0:
            raise AssertionError("exit status %s\n%s" % (rc, self.text()))
        if any(_SANITIZER_RE.search(line) for line in self.err):
            raise AssertionError("sanitizer report\n%s" % self.text())

    def connect(self, url=None, headers=None):
        return websockets.connect(
            url or "ws://127.0.0.1:%d/ws" % self.port,
            extra_headers=headers or {}, compression=None,
            ping_interval=None, open_timeout=IO_TIMEOUT,
            close_timeout=IO_TIMEOUT)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()  # by pid
            self.proc.wait(5)


def hs256_valid(token, secret):
    signing_input, _, sig = token.rpartition(".")
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256)
    return hmac.compare_digest(b64url(mac.digest()), sig)


def send_request(fid, client_msg_id, body):
    f = pb().ClientFrame(id=fid)
    f.send.client_msg_id = client_msg_id
    f.send.user_id = "bob"  # the echo ignores the recipient
    f.send.body = body
    f.send.content_type = "text/plain"
    return f


class TestEchoServer(imctest.AsyncTestCase):

    def setUp(self):
        self.ex = None

    def tearDown(self):
        if self.ex is not None:
            self.ex.kill()

    async def assertEcho(self, ws, fid, n, body):
        """Send body as frame fid; expect SendAck and Deliver of echo-n."""
        await send_frame(ws, send_request(fid, "c%d" % n, body))
        reply, pushes = await recv_reply(ws, fid)
        self.assertEqual(pushes, [], "the SendAck must precede the echo")
        self.assertEqual(reply.WhichOneof("body"), "send_ack", reply)
        ack = reply.send_ack
        self.assertEqual(ack.client_msg_id, "c%d" % n)
        self.assertEqual(ack.msg_id, "echo-%d" % n)
        self.assertEqual(ack.seq, n)
        self.assertEqual(ack.conversation_id, "echo:alice")
        self.assertGreater(ack.sent_at_ms, 0)

        f = await recv_frame(ws)
        self.assertEqual(f.WhichOneof("body"), "deliver", f)
        self.assertEqual(f.id, 0)
        m = f.deliver.message
        self.assertEqual(m.msg_id, "echo-%d" % n)
        self.assertEqual(m.seq, n)
        self.assertEqual(m.conversation_id, "echo:alice")
        self.assertEqual(m.from_user, "echo")
        self.assertEqual(m.to_user, "alice")
        self.assertEqual(m.body, body)
        self.assertEqual(m.content_type, "text/plain")
        self.assertEqual(m.client_msg_id, "c%d" % n)

    async def test_echo_and_sigint(self):
        self.ex = ex = Example()
        # The printed token is alice's, signed with the default secret, and
        # the printed URL carries it.
        self.assertTrue(hs256_valid(ex.token, DEFAULT_SECRET), ex.token)
        claims = jwt_parts(ex.token)[1]
        self.assertEqual(claims.get("sub"), "alice")
        self.assertGreater(claims.get("exp", 0), time.time())
        self.assertEqual(ex.url, "ws://127.0.0.1:%d/ws?token=%s"
                         % (ex.port, ex.token))

        async with ex.connect(ex.url) as ws:
            w = (await welcome(ws)).welcome
            self.assertEqual((w.user_id, w.device_id, w.node_id),
                             ("alice", "default", "echo"))

            await self.assertEcho(ws, 1, 1, b"hello")
            ack = pb().ClientFrame(id=2)
            ack.deliver_ack.msg_ids.append("echo-1")
            await send_frame(ws, ack)
            await ex.await_line(re.compile(
                r"^alice/default acknowledged echo-1$"))

            # Left un-ACKed: shutdown hands it to the upstream.
            await self.assertEcho(ws, 3, 2, b"\x00binary\xff")

            ex.proc.send_signal(signal.SIGINT)
            code, frames = await expect_close(ws)
            self.assertEqual(code, 1001, frames)
        ex.check_clean_exit(await ex.await_exit())
        ex.wait_line(re.compile(r"^alice did not acknowledge echo-2"))
        ex.wait_line(re.compile(r": shutting down$"))

    async def test_reader_that_pauses(self):
        # A client that sends a lot but stops reading for a while: the
        # echoes (about 9 MB against a 4 KiB receive buffer) fill the
        # socket buffers, so the example normally meets EAGAIN and must
        # wait for POLLOUT and call imc_gateway_conn_writable. Every echo
        # must still arrive, in order.
        self.ex = ex = Example()
        n, body = 150, b"x" * 60000  # within the rate limit's burst
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(IO_TIMEOUT)
        sock.connect(("127.0.0.1", ex.port))
        async with websockets.connect(
                ex.url, sock=sock, max_queue=1, read_limit=4096,
                max_size=None, compression=None, ping_interval=None,
                open_timeout=IO_TIMEOUT, close_timeout=IO_TIMEOUT) as ws:
            await welcome(ws)

            async def send_all():
                for i in range(1, n + 1):
                    await send_frame(ws, send_request(i, "c%d" % i, body))

            sender = asyncio.create_task(send_all())
            await asyncio.sleep(1.0)  # not reading meanwhile
            for i in range(1, n + 1):
                f = await recv_frame(ws)
                self.assertEqual((f.id, f.WhichOneof("body")),
                                 (i, "send_ack"), f.id)
                self.assertEqual(f.send_ack.msg_id, "echo-%d" % i)
                f = await recv_frame(ws)
                self.assertEqual(f.WhichOneof("body"), "deliver", f.id)
                self.assertEqual(f.deliver.message.msg_id, "echo-%d" % i)
                self.assertEqual(f.deliver.message.body, body)
            await asyncio.wait_for(sender, IO_TIMEOUT)
        ex.proc.send_signal(signal.SIGINT)
        ex.check_clean_exit(await ex.await_exit())

    async def test_secret_argument(self):
        secret = "another-secret-0123"
        self.ex = ex = Example(secret)
        self.assertTrue(hs256_valid(ex.token, secret), ex.token)

        now = int(time.time())
        tok = sign_hs256({"sub": "bob", "did": "laptop", "iat": now,
                          "exp": now + 600}, secret=secret)
        async with ex.connect(
                headers={"Authorization": "Bearer " + tok}) as ws:
            w = (await welcome(ws)).welcome
            self.assertEqual((w.user_id, w.device_id), ("bob", "laptop"))

        wrong = sign_hs256({"sub": "bob", "iat": now, "exp": now + 600},
                           secret=DEFAULT_SECRET)
        r = http_raw(ex.port, upgrade_request(ex.port, token=wrong))
        self.assertEqual(r.status, 401, r)

        ex.proc.send_signal(signal.SIGINT)
        ex.check_clean_exit(await ex.await_exit())


if __name__ == "__main__":
    imctest.main()

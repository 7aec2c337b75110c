#!/usr/bin/python3
"""End-to-end tests of the gateway of imchatd: the WebSocket client protocol
and the HTTP answers of SPEC section 3, against a real process on loopback.

Run: IMCHATD=build/hosts/imchatd IMC_PROTO_DIR=proto/imchat/v1 \
     /usr/bin/python3 tests/e2e/test_gateway.py [-k PATTERN]
"""

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import websockets  # noqa: E402
import websockets.exceptions  # noqa: E402

import imctest  # noqa: E402
from imctest import (expect_close, http_get, http_raw, ping_frame,  # noqa
                     recv_frame, send_frame, sign_hs256, upgrade_request,
                     welcome)

SRV = None  # the server shared by the tests that do not stop it


def setUpModule():
    global SRV
    SRV = imctest.Server(name="imchatd (shared)").start()


def tearDownModule():
    if SRV is not None:
        SRV.stop()


def pb():
    return imctest.pb()


def claims(sub="alice", ttl=600, **extra):
    now = int(time.time())
    c = {"sub": sub, "iat": now, "exp": now + ttl}
    c.update(extra)
    return c


class GatewayTest(imctest.AsyncTestCase):
    server = None  # set to SRV in setUp

    def setUp(self):
        self.server = SRV
        self.server.check_alive("before the test")

    def tearDown(self):
        self.server.check_alive("after " + self.id())

    def assertJsonError(self, r, status):
        self.assertEqual(r.status, status, r)
        ctype = r.header("content-type") or ""
        self.assertTrue(ctype.startswith("application/json"), r)
        body = r.json()
        self.assertIsInstance(body, dict, r)
        err = body.get("error")
        self.assertIsInstance(err, dict, r)
        self.assertIsInstance(err.get("code"), str, r)
        self.assertTrue(err["code"], r)
        self.assertIsInstance(err.get("message"), str, r)
        return err

    def assertNoUpgrade(self, r):
        self.assertIsNone(r.header("upgrade"), r)
        self.assertIsNone(r.header("sec-websocket-accept"), r)


# ---------------------------------------------------------------------------
# Authentication and Welcome
# ---------------------------------------------------------------------------

class TestWelcome(GatewayTest):

    def test_token_command(self):
        tok = self.server.token("alice", ttl=120)
        h, c = imctest.jwt_parts(tok)
        self.assertEqual(h.get("alg"), "HS256")
        self.assertEqual(c.get("sub"), "alice")
        self.assertNotIn("did", c)
        self.assertIsInstance(c.get("exp"), int)
        self.assertGreater(c["exp"], time.time())
        if "iat" in c:
            self.assertEqual(c["exp"] - c["iat"], 120)

    async def test_bearer_header_welcome(self):
        tok = self.server.token("alice")
        before = imctest.now_ms()
        async with self.server.connect(token=tok) as ws:
            msg = await asyncio.wait_for(ws.recv(), imctest.IO_TIMEOUT)
            self.assertIsInstance(msg, bytes, "Welcome must be binary")
            f = pb().ServerFrame()
            f.ParseFromString(msg)
            self.assertEqual(f.WhichOneof("body"), "welcome", f)
            self.assertEqual(f.id, 0)
            w = f.welcome
            self.assertEqual(w.user_id, "alice")
            self.assertEqual(w.device_id, "default")
            self.assertEqual(w.node_id, imctest.NODE_ID)
            self.assertEqual(w.heartbeat_s, 30)
            self.assertGreaterEqual(w.server_time_ms, before - 60_000)
            self.assertLessEqual(w.server_time_ms, imctest.now_ms() + 60_000)

    async def test_query_token_and_device(self):
        tok = self.server.token("alice")
        async with self.server.connect(
                query={"token": tok, "device": "phone"}) as ws:
            w = (await welcome(ws)).welcome
            self.assertEqual(w.user_id, "alice")
            self.assertEqual(w.device_id, "phone")

    async def test_did_claim(self):
        tok = self.server.token("bob", device="tablet")
        self.assertEqual(imctest.jwt_parts(tok)[1].get("did"), "tablet")
        async with self.server.connect(token=tok) as ws:
            w = (await welcome(ws)).welcome
            self.assertEqual(w.user_id, "bob")
            self.assertEqual(w.device_id, "tablet")

    async def test_token_signed_by_test(self):
        # Control for the bad-token cases: the test's own HS256 signer
        # produces tokens the server accepts.
        tok = sign_hs256(claims("carol", did="laptop"))
        async with self.server.connect(token=tok) as ws:
            w = (await welcome(ws)).welcome
            self.assertEqual(w.user_id, "carol")
            self.assertEqual(w.device_id, "laptop")


class TestBadToken(GatewayTest):

    def bad_tokens(self):
        now = int(time.time())
        good_hdr = {"alg": "HS256", "typ": "JWT"}
        c = claims()
        hs = sign_hs256(c)
        body = hs.rsplit(".", 1)[0]
        return {
            "garbage": "not-a-jwt",
            "garbage-3-parts": "aaa.bbb.ccc",
            "wrong-secret": sign_hs256(c, secret="not-the-server-secret"),
            "expired": sign_hs256({"sub": "alice", "iat": now - 7200,
                                   "exp": now - 3600}),
            "no-exp": sign_hs256({"sub": "alice", "iat": now}),
            "no-sub": sign_hs256({"iat": now, "exp": now + 600}),
            "alg-none": imctest.b64url('{"alg":"none","typ":"JWT"}') + "." +
                        body.split(".")[1] + ".",
            "alg-None": imctest.b64url('{"alg":"None","typ":"JWT"}') + "." +
                        body.split(".")[1] + ".",
            "alg-none-with-sig": imctest.b64url('{"alg":"none"}') + "." +
                                 body.split(".")[1] + "." +
                                 hs.rsplit(".", 1)[1],
            "alg-RS256-hmac": sign_hs256(c, header={"alg": "RS256"}),
            "tampered-payload": body.split(".")[0] + "." +
                                imctest.b64url('{"sub":"mallory","exp":%d}'
                                               % (now + 600)) + "." +
                                hs.rsplit(".", 1)[1],
            "bad-sub": sign_hs256(claims("no spaces allowed")),
            "alg-HS384": sign_hs256(c, header=dict(good_hdr,
                                                          alg="HS384")),
        }

    def test_bad_tokens_401_no_upgrade(self):
        for name, tok in self.bad_tokens().items():
            with self.subTest(token=name):
                r = http_raw(self.server.port,
                             upgrade_request(self.server.port, token=tok))
                self.assertJsonError(r, 401)
                self.assertNoUpgrade(r)

    def test_bad_query_token_401(self):
        tok = sign_hs256(claims(), secret="not-the-server-secret")
        r = http_raw(self.server.port,
                     upgrade_request(self.server.port,
                                     path="/ws?token=" + tok))
        self.assertJsonError(r, 401)
        self.assertNoUpgrade(r)

    def test_missing_token_401(self):
        r = http_raw(self.server.port, upgrade_request(self.server.port))
        self.assertJsonError(r, 401)
        self.assertNoUpgrade(r)

    async def test_client_library_sees_401(self):
        for tok in (None, "garbage"):
            with self.subTest(token=tok):
                with self.assertRaises(
                        websockets.exceptions.InvalidStatusCode) as cm:
                    async with self.server.connect(token=tok):
                        pass
                self.assertEqual(cm.exception.status_code, 401)


# ---------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------

class TestFrames(GatewayTest):

    async def test_ping_pong(self):
        async with self.server.connect(
                token=self.server.token("alice")) as ws:
            await welcome(ws)
            before = imctest.now_ms()
            await send_frame(ws, ping_frame(7, client_time_ms=123456789))
            f = await recv_frame(ws)
            self.assertEqual(f.WhichOneof("body"), "pong", f)
            self.assertEqual(f.id, 7)
            self.assertEqual(f.pong.client_time_ms, 123456789)
            self.assertGreaterEqual(f.pong.server_time_ms, before - 60_000)
            self.assertLessEqual(f.pong.server_time_ms,
                                 imctest.now_ms() + 60_000)

    async def test_text_frame_closes_1003(self):
        async with self.server.connect(
                token=self.server.token("alice")) as ws:
            await welcome(ws)
            await ws.send("hello")
            code, _ = await expect_close(ws)
            self.assertEqual(code, 1003)

    async def test_message_over_default_limit_closes_1009(self):
        async with self.server.connect(
                token=self.server.token("alice")) as ws:
            await welcome(ws)
            # The message limit is the body limit plus 1 KiB of envelope.
            await ws.send(b"\x00" * (65536 + 1024 + 1))
            code, _ = await expect_close(ws)
            self.assertEqual(code, 1009)

    async def test_undecodable_frame_bad_request(self):
        async with self.server.connect(
                token=self.server.token("alice")) as ws:
            await welcome(ws)
            await ws.send(b"\xff\xff\xff\xff")
            f = await recv_frame(ws)
            self.assertEqual(f.WhichOneof("body"), "error", f)
            self.assertEqual(f.error.code, pb().Error.BAD_REQUEST, f)
            # The connection stays up.
            await send_frame(ws, ping_frame(8))
            f = await recv_frame(ws)
            self.assertEqual(f.WhichOneof("body"), "pong", f)
            self.assertEqual(f.id, 8)

    async def test_ten_bad_frames_in_a_row_close_1008(self):
        async with self.server.connect(
                token=self.server.token("alice")) as ws:
            await welcome(ws)
            # Nine bad frames and a good one: the run is broken, still up.
            for _ in range(9):
                await ws.send(b"\xff\xff\xff\xff")
            for _ in range(9):
                f = await recv_frame(ws)
                self.assertEqual(f.error.code, pb().Error.BAD_REQUEST, f)
            await send_frame(ws, ping_frame(9))
            f = await recv_frame(ws)
            self.assertEqual(f.WhichOneof("body"), "pong", f)
            # Ten in a row: policy violation.
            for _ in range(10):
                await ws.send(b"\xff\xff\xff\xff")
            code, frames = await expect_close(ws)
            self.assertEqual(code, 1008, frames)
            errors = [f for f in frames
                      if not isinstance(f, str) and
                      f.WhichOneof("body") == "error"]
            self.assertGreaterEqual(len(errors), 9, frames)

    async def test_send_answered_with_send_ack(self):
        # The gateway hands a Send to the router and answers with its
        # SendAck. Only the answer to the frame is checked here; delivery,
        # statuses and dedup belong to the routing tests.
        to = "e2e-peer-%d" % time.monotonic_ns()
        async with self.server.connect(
                token=self.server.token("alice")) as ws:
            await welcome(ws)
            f = pb().ClientFrame(id=42)
            f.send.client_msg_id = "c-1"
            f.send.user_id = to
            f.send.body = b"hi"
            f.send.content_type = "text/plain"
            before = imctest.now_ms()
            await send_frame(ws, f)
            r = await recv_frame(ws)
            self.assertEqual(r.id, 42, r)
            self.assertEqual(r.WhichOneof("body"), "send_ack", r)
            a = r.send_ack
            self.assertEqual(a.client_msg_id, "c-1")
            self.assertTrue(a.msg_id, r)
            self.assertEqual(a.conversation_id,
                             "p:%s:%s" % tuple(sorted(("alice", to))))
            self.assertEqual(a.seq, 1, "first message of a conversation")
            self.assertGreaterEqual(a.sent_at_ms, before - 60_000)
            self.assertLessEqual(a.sent_at_ms, imctest.now_ms() + 60_000)
            # Still connected. (A DeliveryStatus push may come first.)
            await send_frame(ws, ping_frame(43))
            r, _ = await imctest.recv_reply(ws, 43)
            self.assertEqual(r.WhichOneof("body"), "pong", r)


class TestPublicKey(GatewayTest):
    """A server that accepts RS256 tokens of an RSA key (--jwt-public-key)
    and nothing else: the tokens are signed with the openssl command."""

    @classmethod
    def setUpClass(cls):
        d = imctest.mkdtemp("rsa")
        cls.key = os.path.join(d, "key.pem")
        pub = os.path.join(d, "pub.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA",
                        "-pkeyopt", "rsa_keygen_bits:2048", "-out", cls.key],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", cls.key, "-pubout",
                        "-out", pub], check=True, capture_output=True)
        with open(pub) as f:
            cls.pub_pem = f.read()
        cls.rsa = imctest.Server("--jwt-public-key", pub, secret=None,
                                 name="imchatd (--jwt-public-key)").start()

    @classmethod
    def tearDownClass(cls):
        cls.rsa.stop()

    def setUp(self):
        self.server = self.rsa
        self.server.check_alive("before the test")

    def rs256(self, c):
        header = {"alg": "RS256", "typ": "JWT"}
        signing_input = (imctest.b64url(json.dumps(header)) + "." +
                         imctest.b64url(json.dumps(c)))
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key],
                             input=signing_input.encode(), check=True,
                             capture_output=True).stdout
        return signing_input + "." + imctest.b64url(sig)

    async def test_rs256_token_accepted(self):
        async with self.server.connect(
                token=self.rs256(claims("rita"))) as ws:
            w = (await welcome(ws)).welcome
            self.assertEqual(w.user_id, "rita")

    def test_other_tokens_refused(self):
        # HS256 is not configured, not even keyed with the public key's
        # bytes; an expired RS256 token is refused too.
        for tok in [sign_hs256(claims("rita")),
                    sign_hs256(claims("rita"), secret=self.pub_pem),
                    self.rs256(claims("rita", ttl=-120))]:
            r = http_raw(self.server.port, upgrade_request(self.server.port,
                                                           token=tok))
            self.assertEqual(r.status, 401, r)


class TestMaxBody(GatewayTest):
    """A server with --max-body 1024: bodies up to 1024 bytes, WebSocket
    messages up to 1024 + 1024 bytes (room for the fields around a body)."""

    @classmethod
    def setUpClass(cls):
        cls.small = imctest.Server("--max-body", "1024",
                                   name="imchatd (--max-body 1024)").start()

    @classmethod
    def tearDownClass(cls):
        cls.small.stop()

    def setUp(self):
        self.server = self.small
        self.server.check_alive("before the test")

    @staticmethod
    def padded_ping(fid, size):
        """A ClientFrame with a Ping, padded to exactly size bytes with an
        unknown length-delimited field (which decoders skip)."""
        def varint(n):
            out = bytearray()
            while True:
                b = n & 0x7F
                n >>= 7
                if n:
                    out.append(b | 0x80)
                else:
                    out.append(b)
                    return bytes(out)
        base = ping_frame(fid, client_time_ms=1).SerializeToString()
        tag = varint((999 << 3) | 2)
        for n in range(size, -1, -1):
            total = len(base) + len(tag) + len(varint(n)) + n
            if total == size:
                return base + tag + varint(n) + b"p" * n
        raise ValueError(size)

    async def test_limit_is_inclusive(self):
        async with self.server.connect(
                token=self.server.token("alice")) as ws:
            await welcome(ws)
            msg = self.padded_ping(11, 2048)
            self.assertEqual(len(msg), 2048)
            await ws.send(msg)
            f = await recv_frame(ws)
            self.assertEqual(f.WhichOneof("body"), "pong", f)
            self.assertEqual(f.id, 11)

    async def test_over_limit_closes_1009(self):
        async with self.server.connect(
                token=self.server.token("alice")) as ws:
            await welcome(ws)
            await ws.send(self.padded_ping(12, 2049))
            code, _ = await expect_close(ws)
            self.assertEqual(code, 1009)

    async def test_body_over_limit_too_large(self):
        async with self.server.connect(
                token=self.server.token("alice")) as ws:
            await welcome(ws)
            cf = imctest.pb().ClientFrame(id=13)
            cf.send.client_msg_id = "big"
            cf.send.user_id = "bob"
            cf.send.body = b"b" * 1025
            await ws.send(cf.SerializeToString())
            r, _ = await imctest.recv_reply(ws, 13)
            self.assertEqual(r.WhichOneof("body"), "error", r)
            self.assertEqual(r.error.code, imctest.pb().Error.TOO_LARGE)
            # The connection stays up.
            await ws.send(ping_frame(14, client_time_ms=1).SerializeToString())
            r, _ = await imctest.recv_reply(ws, 14)
            self.assertEqual(r.WhichOneof("body"), "pong", r)


class TestMaxDevices(GatewayTest):
    """A server with --max-devices 3: a user's fourth connection is refused
    with 429 before the upgrade; other users are not concerned."""

    MAX = 3

    @classmethod
    def setUpClass(cls):
        cls.few = imctest.Server("--max-devices", str(cls.MAX),
                                 name="imchatd (--max-devices 3)").start()

    @classmethod
    def tearDownClass(cls):
        cls.few.stop()

    def setUp(self):
        self.server = self.few
        self.server.check_alive("before the test")

    async def test_device_over_limit_429(self):
        tok = self.server.token("erin")
        conns = []
        try:
            for i in range(self.MAX):
                ws = await self.server.connect(
                    token=tok, query={"device": "d%d" % i})
                conns.append(ws)
                self.assertEqual((await welcome(ws)).welcome.device_id,
                                 "d%d" % i)
            path = "/ws?device=d%d" % self.MAX
            r = http_raw(self.server.port, upgrade_request(
                self.server.port, path=path, token=tok))
            self.assertEqual(r.status, 429, r)
            self.assertEqual(r.json()["error"]["code"], "TOO_MANY_DEVICES", r)
            self.assertIsNone(r.header("Sec-WebSocket-Accept"), r)
            # Another user still gets in.
            async with self.server.connect(
                    token=self.server.token("frank")) as ws:
                await welcome(ws)
            # A device that leaves frees its slot.
            await conns.pop().close()
            for _ in range(50):
                r = http_raw(self.server.port, upgrade_request(
                    self.server.port, path=path, token=tok))
                if r.status == 101:
                    break
                self.assertEqual(r.status, 429, r)
                await asyncio.sleep(0.05)
            self.assertEqual(r.status, 101, r)
        finally:
            for ws in conns:
                await ws.close()


# ---------------------------------------------------------------------------
# HTTP answers
# ---------------------------------------------------------------------------

class TestHttp(GatewayTest):

    def test_healthz(self):
        r = http_get(self.server.port, "/healthz")
        self.assertEqual(r.status, 200, r)

    def test_wrong_websocket_version_426(self):
        tok = self.server.token("alice")
        r = http_raw(self.server.port,
                     upgrade_request(self.server.port, token=tok,
                                     version="8"))
        self.assertEqual(r.status, 426, r)
        self.assertEqual(r.header("sec-websocket-version"), "13", r)
        self.assertNoUpgrade(r)

    def test_unknown_path_404(self):
        r = http_get(self.server.port, "/no-such-path")
        self.assertJsonError(r, 404)

    def test_oversized_request_head_431(self):
        pad = "a" * (9 * 1024)
        r = http_raw(self.server.port,
                     "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "X-Pad: %s\r\n\r\n" % pad)
        self.assertEqual(r.status, 431, r)

    def test_request_head_under_limit_ok(self):
        pad = "a" * (7 * 1024)
        r = http_get(self.server.port, "/healthz", headers={"X-Pad": pad})
        self.assertEqual(r.status, 200, r)


# ---------------------------------------------------------------------------
# Process lifecycle (each test runs its own server)
# ---------------------------------------------------------------------------

class TestLifecycle(imctest.AsyncTestCase):

    async def test_sigterm_closes_1001_and_exits_0(self):
        srv = imctest.Server(name="imchatd (SIGTERM)").start()
        try:
            async with srv.connect(token=srv.token("alice")) as a, \
                       srv.connect(token=srv.token("bob",
                                                   device="tablet")) as b:
                await welcome(a)
                await welcome(b)
                srv.proc.send_signal(signal.SIGTERM)
                for ws in (a, b):
                    code, _ = await expect_close(ws)
                    self.assertEqual(code, 1001)
            rc = await asyncio.get_running_loop().run_in_executor(
                None, srv.wait_exit)
            self.assertEqual(rc, 0, srv.stderr_text())
            srv.check_sanitizers()
        finally:
            srv.kill()

    async def test_generated_secret(self):
        # Without a configured secret imchatd creates DATA_DIR/jwt.secret,
        # and `imchatd token` with the same data dir signs with it.
        srv = imctest.Server(secret=None, name="imchatd (no secret)").start()
        try:
            path = os.path.join(srv.data_dir, "jwt.secret")
            self.assertTrue(os.path.isfile(path), srv.stderr_text())
            self.assertGreater(os.path.getsize(path), 0)
            mode = stat.S_IMODE(os.stat(path).st_mode)
            self.assertEqual(mode & 0o077, 0,
                             "jwt.secret is readable by others: %o" % mode)
            async with srv.connect(token=srv.token("dave")) as ws:
                self.assertEqual((await welcome(ws)).welcome.user_id, "dave")
            # A token signed with another secret is refused.
            r = http_raw(srv.port, upgrade_request(
                srv.port, token=sign_hs256(claims("dave"))))
            self.assertEqual(r.status, 401, r)
            srv.stop()
        finally:
            srv.kill()


if __name__ == "__main__":
    imctest.main()

#!/usr/bin/python3
"""End-to-end tests of imchatd as a complete single-node IM server: 1:1 and
group messaging, offline inboxes, history, dedup, ACK fallback, durability
across kill -9 and SIGTERM, limits, the content filter, encryption at rest
and metrics (SPEC section 3, doc/protocol.md).

Every test starts its own imchatd (with the flags it needs) on loopback and
drives it with independent WebSocket clients and plain HTTP.

Run: IMCHATD=build/hosts/imchatd IMC_PROTO_DIR=proto/imchat/v1 \
     /usr/bin/python3 tests/e2e/test_chat.py [-k PATTERN]
"""

import asyncio
import base64
import contextlib
import os
import signal
import sqlite3
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imctest  # noqa: E402
from imctest import (IO_TIMEOUT, expect_close, http_raw, send_frame,  # noqa
                     sign_hs256, welcome)

ADMIN = "e2e-admin-token-0123456789"
QUIET = 0.5  # s: how long "nothing more arrives" is watched

MSG_FIELDS = ("msg_id", "conversation_id", "seq", "from_user", "to_user",
              "group_id", "body", "content_type", "sent_at_ms",
              "client_msg_id", "from_device")


def pb():
    return imctest.pb()


def token(user, device=None, secret=imctest.SECRET, ttl=600):
    now = int(time.time())
    c = {"sub": user, "iat": now, "exp": now + ttl}
    if device is not None:
        c["did"] = device
    return sign_hs256(c, secret=secret)


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------

def http(port, method, path, bearer=None, headers=None, body=b""):
    """One HTTP/1.1 request; the imctest.Response."""
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1:%d" % port,
             "Connection: close"]
    if bearer is not None:
        lines.append("Authorization: Bearer %s" % bearer)
    for k, v in (headers or {}).items():
        lines.append("%s: %s" % (k, v))
    if body or method in ("PUT", "POST"):
        lines.append("Content-Length: %d" % len(body))
    return http_raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def msg_dict(m):
    """A protobuf Message as the JSON shape of the HTTP API (body base64)."""
    d = {f: getattr(m, f) for f in MSG_FIELDS}
    d["body"] = base64.b64encode(m.body).decode()
    return d


def prom_value(text, name, labels=None):
    """The value of one sample of a Prometheus text exposition."""
    want = name + ("{%s}" % labels if labels else "")
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        if key == want:
            return float(value)
    raise AssertionError("no sample %s in /metrics:\n%s" % (want, text))


# ---------------------------------------------------------------------------
# A client that keeps the frames it has not looked at yet
# ---------------------------------------------------------------------------

class Client:
    """One WebSocket connection of user/device. Frames read while waiting
    for something else stay buffered, so each wait is for one specific
    frame and nothing is lost or reordered."""

    def __init__(self, server, user, device, ws, hello):
        self.server = server
        self.user = user
        self.device = device
        self.ws = ws
        self.welcome = hello
        self.buf = []
        self.next_id = 1

    def __repr__(self):
        return "Client(%s/%s)" % (self.user, self.device)

    async def _read(self, timeout):
        """The next ServerFrame, or None after timeout seconds."""
        try:
            msg = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            return None
        if not isinstance(msg, bytes):
            raise AssertionError("%r: server sent a text message: %r"
                                 % (self, msg[:200]))
        f = pb().ServerFrame()
        f.ParseFromString(msg)
        return f

    async def next(self, pred, what, timeout=IO_TIMEOUT):
        """The first frame (buffered or new) matching pred; fails after
        timeout seconds."""
        for i, f in enumerate(self.buf):
            if pred(f):
                return self.buf.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("%r: no %s within %.1f s; other frames: "
                                     "%s" % (self, what, timeout, self.buf))
            f = await self._read(left)
            if f is None:
                continue
            if pred(f):
                return f
            self.buf.append(f)

    async def quiet(self, pred, what, seconds=QUIET):
        """Watches for seconds that no frame matching pred arrives (and that
        none is buffered)."""
        for f in self.buf:
            if pred(f):
                raise AssertionError("%r: unexpected %s: %s"
                                     % (self, what, f))
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            f = await self._read(left)
            if f is None:
                return
            if pred(f):
                raise AssertionError("%r: unexpected %s: %s"
                                     % (self, what, f))
            self.buf.append(f)

    # -- requests --
    async def send_raw(self, data):
        await self.ws.send(data)

    async def send(self, to=None, group=None, body=b"hi", cmid=None,
                   ctype="text/plain"):
        """Sends a SendRequest; returns the frame id (see reply())."""
        fid = self.next_id
        self.next_id += 1
        f = pb().ClientFrame(id=fid)
        f.send.client_msg_id = cmid if cmid is not None else \
            "%s-%s-%d-%d" % (self.user, self.device, fid, time.monotonic_ns())
        if to is not None:
            f.send.user_id = to
        if group is not None:
            f.send.group_id = group
        f.send.body = body
        if ctype is not None:
            f.send.content_type = ctype
        await send_frame(self.ws, f)
        return fid

    async def reply(self, fid, timeout=IO_TIMEOUT):
        return await self.next(lambda f: f.id == fid,
                               "reply to frame %d" % fid, timeout)

    async def sent(self, *args, **kw):
        """send() and its SendAck (fails on an Error)."""
        fid = await self.send(*args, **kw)
        r = await self.reply(fid)
        if r.WhichOneof("body") != "send_ack":
            raise AssertionError("%r: send %r %r answered %s"
                                 % (self, args, kw, r))
        return r.send_ack

    async def error(self, fid):
        """The Error answering frame fid."""
        r = await self.reply(fid)
        if r.WhichOneof("body") != "error":
            raise AssertionError("%r: expected an Error for frame %d, got %s"
                                 % (self, fid, r))
        return r.error

    async def deliver(self, msg_id=None, timeout=IO_TIMEOUT):
        """The next pushed Message (with msg_id, if given)."""
        f = await self.next(
            lambda f: f.id == 0 and f.WhichOneof("body") == "deliver" and
            (msg_id is None or f.deliver.message.msg_id == msg_id),
            "Deliver of %s" % (msg_id or "any message"), timeout)
        return f.deliver.message

    async def status(self, msg_id, timeout=IO_TIMEOUT):
        f = await self.next(
            lambda f: f.id == 0 and f.WhichOneof("body") == "status" and
            f.status.msg_id == msg_id,
            "DeliveryStatus of %s" % msg_id, timeout)
        return f.status

    async def no_deliver(self, msg_id=None, seconds=QUIET):
        await self.quiet(
            lambda f: f.WhichOneof("body") == "deliver" and
            (msg_id is None or f.deliver.message.msg_id == msg_id),
            "Deliver of %s" % (msg_id or "any message"), seconds)

    async def no_status(self, msg_id, seconds=QUIET):
        await self.quiet(
            lambda f: f.WhichOneof("body") == "status" and
            f.status.msg_id == msg_id,
            "second DeliveryStatus of %s" % msg_id, seconds)

    async def ack(self, *msg_ids):
        f = pb().ClientFrame(id=self.next_id)
        self.next_id += 1
        f.deliver_ack.msg_ids.extend(msg_ids)
        await send_frame(self.ws, f)


# ---------------------------------------------------------------------------
# Base
# ---------------------------------------------------------------------------

class ChatTest(imctest.AsyncTestCase):
    """Each test has its own servers (self.server() starts one) and
    clients (self.client() opens one); both are cleaned up after it."""

    async def asyncSetUp(self):
        await super().asyncSetUp()
        self.stack = contextlib.AsyncExitStack()
        self.servers = []

    async def asyncTearDown(self):
        try:
            await self.stack.aclose()
        finally:
            for s in self.servers:
                if s.alive():
                    s.check_alive("after " + self.id())
                s.check_sanitizers()
            for s in self.servers:
                if s.alive():
                    s.stop()

    def server(self, *flags, admin=True, data_dir=None, name=None):
        args = list(flags)
        if admin:
            args += ["--admin-token", ADMIN]
        s = imctest.Server(*args, data_dir=data_dir,
                           name=name or "imchatd (%s)" %
                           self.id().rsplit(".", 1)[-1]).start()
        self.servers.append(s)
        return s

    async def client(self, srv, user, device=None, stack=None):
        """A connected Client; closed with stack (default: the test's)."""
        ws = await (stack or self.stack).enter_async_context(
            srv.connect(token=token(user, device, secret=srv.secret)))
        w = (await welcome(ws)).welcome
        self.assertEqual(w.user_id, user)
        self.assertEqual(w.device_id, device or "default")
        return Client(srv, user, device or "default", ws, w)

    # -- HTTP API --
    def add_member(self, srv, group, user):
        r = http(srv.port, "PUT", "/v1/groups/%s/members/%s" % (group, user),
                 bearer=ADMIN)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {"group_id": group, "user_id": user,
                                    "member": True})

    def remove_member(self, srv, group, user):
        r = http(srv.port, "DELETE",
                 "/v1/groups/%s/members/%s" % (group, user), bearer=ADMIN)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {"group_id": group, "user_id": user,
                                    "member": False})

    def members(self, srv, group):
        r = http(srv.port, "GET", "/v1/groups/%s/members" % group,
                 bearer=ADMIN)
        self.assertEqual(r.status, 200, r)
        body = r.json()
        self.assertEqual(list(body), ["members"], r)
        return sorted(body["members"])

    def assertJsonError(self, r, status, code=None):
        self.assertEqual(r.status, status, r)
        self.assertTrue((r.header("content-type") or "")
                        .startswith("application/json"), r)
        err = r.json().get("error")
        self.assertIsInstance(err, dict, r)
        self.assertIsInstance(err.get("code"), str, r)
        self.assertIsInstance(err.get("message"), str, r)
        self.assertTrue(err["message"], r)
        if code is not None:
            self.assertEqual(err["code"], code, r)
        return err

    def page(self, srv, path, user, proto=False):
        """GET path as user; the page as JSON (dict) or OfflinePage."""
        headers = {"Accept": "application/x-protobuf"} if proto else None
        r = http(srv.port, "GET", path, bearer=token(user, secret=srv.secret),
                 headers=headers)
        self.assertEqual(r.status, 200, r)
        ctype = r.header("content-type") or ""
        if proto:
            self.assertTrue(ctype.startswith("application/x-protobuf"), r)
            p = pb().OfflinePage()
            p.ParseFromString(r.body)
            return p
        self.assertTrue(ctype.startswith("application/json"), r)
        body = r.json()
        self.assertEqual(set(body), {"messages", "next_cursor", "has_more"},
                         r)
        for m in body["messages"]:
            self.assertEqual(set(m), set(MSG_FIELDS) | {"cursor"}, m)
        return body

    def offline(self, srv, user, cursor=0, limit=100, proto=False):
        return self.page(srv, "/offline?cursor=%d&limit=%d" % (cursor, limit),
                         user, proto)

    def history(self, srv, conv, user, after=0, limit=100):
        return self.page(srv, "/v1/conversations/%s/messages?after_seq=%d"
                         "&limit=%d" % (conv, after, limit), user)

    def wait_page(self, fetch, pred, what, timeout=IO_TIMEOUT):
        """Polls fetch() until pred(page); for what the worker writes off the
        delivery path (history, inboxes after a restart)."""
        deadline = time.monotonic() + timeout
        while True:
            p = fetch()
            if pred(p):
                return p
            if time.monotonic() > deadline:
                raise AssertionError("%s: not there within %.0f s; last "
                                     "page: %s" % (what, timeout, p))
            time.sleep(0.02)

    def assertMsg(self, got, expected):
        """got: a JSON message of a page; expected: a protobuf Message."""
        want = msg_dict(expected)
        self.assertEqual({k: got[k] for k in MSG_FIELDS}, want)


def ids(page):
    return [m["msg_id"] for m in page["messages"]]


# ---------------------------------------------------------------------------
# 1. Online 1:1
# ---------------------------------------------------------------------------

class TestOnline(ChatTest):

    async def test_online_one_to_one(self):
        srv = self.server()
        alice = await self.client(srv, "alice")
        bob = await self.client(srv, "bob")

        before = imctest.now_ms()
        fid = await alice.send(to="bob", body=b"hello bob", cmid="a-1",
                               ctype="text/plain")
        r = await alice.reply(fid)
        self.assertEqual(r.WhichOneof("body"), "send_ack", r)
        a = r.send_ack
        self.assertEqual(a.client_msg_id, "a-1")
        self.assertRegex(a.msg_id, r"^[0-9a-f]{32}$")
        self.assertEqual(a.conversation_id, "p:alice:bob")
        self.assertEqual(a.seq, 1)
        self.assertGreaterEqual(a.sent_at_ms, before - 60_000)
        self.assertLessEqual(a.sent_at_ms, imctest.now_ms() + 60_000)

        m = await bob.deliver()
        self.assertEqual(m.msg_id, a.msg_id)
        self.assertEqual(m.conversation_id, "p:alice:bob")
        self.assertEqual(m.seq, 1)
        self.assertEqual(m.body, b"hello bob")
        self.assertEqual(m.content_type, "text/plain")
        self.assertEqual(m.from_user, "alice")
        self.assertEqual(m.from_device, "default")
        self.assertEqual(m.to_user, "bob")
        self.assertEqual(m.group_id, "")
        self.assertEqual(m.client_msg_id, "a-1")
        self.assertEqual(m.sent_at_ms, a.sent_at_ms)
        await bob.ack(m.msg_id)

        st = await alice.status(a.msg_id)
        self.assertEqual(st.state, pb().DeliveryStatus.DELIVERED, st)
        self.assertEqual(st.user_id, "bob")
        self.assertEqual(st.client_msg_id, "a-1")

        # The second message continues the conversation.
        a2 = await alice.sent(to="bob", body=b"second")
        self.assertEqual(a2.conversation_id, "p:alice:bob")
        self.assertEqual(a2.seq, 2)
        self.assertNotEqual(a2.msg_id, a.msg_id)
        m2 = await bob.deliver(a2.msg_id)
        self.assertEqual((m2.seq, m2.body), (2, b"second"))
        await bob.ack(m2.msg_id)
        st = await alice.status(a2.msg_id)
        self.assertEqual(st.state, pb().DeliveryStatus.DELIVERED, st)

        # bob -> alice is the same conversation: seq 3.
        b1 = await bob.sent(to="alice", body=b"hi alice")
        self.assertEqual(b1.conversation_id, "p:alice:bob")
        self.assertEqual(b1.seq, 3)
        m3 = await alice.deliver(b1.msg_id)
        self.assertEqual((m3.seq, m3.from_user, m3.to_user, m3.body),
                         (3, "bob", "alice", b"hi alice"))
        await alice.ack(m3.msg_id)
        st = await bob.status(b1.msg_id)
        self.assertEqual(st.state, pb().DeliveryStatus.DELIVERED, st)
        self.assertEqual(st.user_id, "alice")

        # One status per message; nobody got a copy of its own message.
        await alice.no_status(a.msg_id)
        await alice.no_deliver()
        await bob.no_deliver()
        self.assertEqual(ids(self.offline(srv, "bob"))
                         + ids(self.offline(srv, "alice")), [])


# ---------------------------------------------------------------------------
# 2. Offline 1:1 and GET /offline
# ---------------------------------------------------------------------------

class TestOffline(ChatTest):

    async def test_offline_inbox(self):
        srv = self.server()
        alice = await self.client(srv, "alice", "phone")
        body = bytes(range(256)) + "ü €".encode()  # base64 must carry bytes
        a = await alice.sent(to="carol", body=body, cmid="c-1",
                             ctype="application/octet-stream")
        self.assertEqual((a.conversation_id, a.seq), ("p:alice:carol", 1))
        st = await alice.status(a.msg_id)
        self.assertEqual(st.state, pb().DeliveryStatus.STORED, st)
        self.assertEqual(st.user_id, "carol")
        self.assertEqual(st.client_msg_id, "c-1")

        expected = pb().Message(
            msg_id=a.msg_id, conversation_id="p:alice:carol", seq=1,
            from_user="alice", to_user="carol", group_id="", body=body,
            content_type="application/octet-stream",
            sent_at_ms=a.sent_at_ms, client_msg_id="c-1",
            from_device="phone")

        p = self.offline(srv, "carol")
        self.assertEqual(len(p["messages"]), 1, p)
        self.assertMsg(p["messages"][0], expected)
        cur = p["messages"][0]["cursor"]
        self.assertIsInstance(cur, int)
        self.assertGreater(cur, 0)
        self.assertEqual(p["next_cursor"], cur)
        self.assertIs(p["has_more"], False)

        pp = self.offline(srv, "carol", proto=True)
        self.assertEqual(len(pp.messages), 1, pp)
        self.assertEqual(pp.messages[0].message, expected)
        self.assertEqual(pp.messages[0].cursor, cur)
        self.assertEqual(pp.next_cursor, cur)
        self.assertFalse(pp.has_more)

        # Fetching never deletes.
        self.assertEqual(self.offline(srv, "carol"), p)
        # Nothing after the last cursor.
        p2 = self.offline(srv, "carol", cursor=cur)
        self.assertEqual(p2, {"messages": [], "next_cursor": cur,
                              "has_more": False})
        pp2 = self.offline(srv, "carol", cursor=cur, proto=True)
        self.assertEqual((len(pp2.messages), pp2.next_cursor, pp2.has_more),
                         (0, cur, False))
        # The sender's own inbox stays empty.
        self.assertEqual(ids(self.offline(srv, "alice")), [])

    async def test_offline_paging(self):
        srv = self.server()
        alice = await self.client(srv, "alice")
        sent = []
        for i in range(3):
            a = await alice.sent(to="carol", body=b"m%d" % i)
            self.assertEqual(a.seq, i + 1)
            st = await alice.status(a.msg_id)
            self.assertEqual(st.state, pb().DeliveryStatus.STORED, st)
            sent.append(a.msg_id)
        p = self.offline(srv, "carol", limit=2)
        self.assertEqual(ids(p), sent[:2])
        self.assertIs(p["has_more"], True)
        self.assertEqual(p["next_cursor"], p["messages"][1]["cursor"])
        self.assertLess(p["messages"][0]["cursor"],
                        p["messages"][1]["cursor"])
        p2 = self.offline(srv, "carol", cursor=p["next_cursor"], limit=2)
        self.assertEqual(ids(p2), sent[2:])
        self.assertIs(p2["has_more"], False)
        self.assertEqual(ids(self.offline(srv, "carol")), sent)


# ---------------------------------------------------------------------------
# 3. Groups
# ---------------------------------------------------------------------------

class TestGroup(ChatTest):

    async def test_group_with_offline_member(self):
        srv = self.server()
        for u in ("alice", "bob", "carol"):
            self.add_member(srv, "team", u)
        self.add_member(srv, "team", "alice")  # idempotent
        self.assertEqual(self.members(srv, "team"), ["alice", "bob", "carol"])

        alice = await self.client(srv, "alice")
        bob = await self.client(srv, "bob")
        a = await alice.sent(group="team", body=b"hello team", cmid="g-1")
        self.assertEqual(a.conversation_id, "g:team")
        self.assertEqual(a.seq, 1)

        m = await bob.deliver(a.msg_id)
        self.assertEqual((m.conversation_id, m.seq, m.group_id, m.from_user,
                          m.from_device, m.body, m.client_msg_id),
                         ("g:team", 1, "team", "alice", "default",
                          b"hello team", "g-1"))
        await bob.ack(m.msg_id)

        st = await alice.status(a.msg_id)
        self.assertEqual(st.state, pb().DeliveryStatus.STORED, st)
        self.assertEqual(st.user_id, "")
        self.assertEqual(st.client_msg_id, "g-1")
        await alice.no_status(a.msg_id)   # exactly one
        await alice.no_deliver(a.msg_id)  # not to the sending device

        p = self.offline(srv, "carol")
        self.assertEqual(ids(p), [a.msg_id])
        self.assertMsg(p["messages"][0], m)
        self.assertEqual(ids(self.offline(srv, "bob")), [])
        self.assertEqual(ids(self.offline(srv, "alice")), [])

        # A non-member may not send to the group.
        dave = await self.client(srv, "dave")
        fid = await dave.send(group="team", body=b"let me in")
        self.assertEqual((await dave.error(fid)).code, pb().Error.FORBIDDEN)

        # Removed: bob can no longer send.
        self.remove_member(srv, "team", "bob")
        self.remove_member(srv, "team", "bob")  # idempotent
        self.assertEqual(self.members(srv, "team"), ["alice", "carol"])
        fid = await bob.send(group="team", body=b"still here?")
        self.assertEqual((await bob.error(fid)).code, pb().Error.FORBIDDEN)
        # alice still can; the seq goes on.
        a2 = await alice.sent(group="team", body=b"bye bob")
        self.assertEqual(a2.seq, 2)
        await bob.no_deliver(a2.msg_id)

    def test_admin_token_required(self):
        srv = self.server()
        paths = [("PUT", "/v1/groups/team/members/alice"),
                 ("DELETE", "/v1/groups/team/members/alice"),
                 ("GET", "/v1/groups/team/members")]
        for method, path in paths:
            with self.subTest(method=method, token="wrong"):
                r = http(srv.port, method, path, bearer=ADMIN + "x")
                self.assertJsonError(r, 403)
            with self.subTest(method=method, token="user JWT"):
                r = http(srv.port, method, path, bearer=token("alice"))
                self.assertJsonError(r, 403)
            with self.subTest(method=method, token="missing"):
                r = http(srv.port, method, path)
                self.assertJsonError(r, 401)
        # Nothing changed.
        self.assertEqual(self.members(srv, "team"), [])

    def test_admin_api_disabled_without_token(self):
        srv = self.server(admin=False)
        r = http(srv.port, "PUT", "/v1/groups/team/members/alice",
                 bearer=ADMIN)
        self.assertJsonError(r, 403)
        r = http(srv.port, "GET", "/v1/groups/team/members", bearer=ADMIN)
        self.assertJsonError(r, 403)


# ---------------------------------------------------------------------------
# 4. Several devices
# ---------------------------------------------------------------------------

class TestDevices(ChatTest):

    async def test_all_devices_but_the_sending_one(self):
        srv = self.server()
        bob_phone = await self.client(srv, "bob", "phone")
        bob_laptop = await self.client(srv, "bob", "laptop")
        alice_phone = await self.client(srv, "alice", "phone")
        alice_laptop = await self.client(srv, "alice", "laptop")

        a = await alice_phone.sent(to="bob", body=b"to all of bob")
        for c in (bob_phone, bob_laptop, alice_laptop):
            m = await c.deliver(a.msg_id)
            self.assertEqual((m.seq, m.body, m.from_user, m.from_device,
                              m.to_user),
                             (1, b"to all of bob", "alice", "phone", "bob"),
                             c)
        await alice_phone.no_deliver(a.msg_id)

        # The ACK of the sender's other device is not a delivery to bob.
        await alice_laptop.ack(a.msg_id)
        await alice_phone.no_status(a.msg_id)
        await bob_laptop.ack(a.msg_id)
        st = await alice_phone.status(a.msg_id)
        self.assertEqual(st.state, pb().DeliveryStatus.DELIVERED, st)
        self.assertEqual(st.user_id, "bob")
        # The status goes to the sending device only, and once.
        await bob_phone.ack(a.msg_id)
        await alice_phone.no_status(a.msg_id)
        await alice_laptop.no_status(a.msg_id, seconds=0)

        # bob's reply reaches both of alice's devices and bob's other one.
        b = await bob_laptop.sent(to="alice", body=b"got it")
        self.assertEqual(b.seq, 2)
        for c in (alice_phone, alice_laptop, bob_phone):
            m = await c.deliver(b.msg_id)
            await c.ack(m.msg_id)
        await bob_laptop.no_deliver(b.msg_id)

    async def wait_ack_timeouts(self, srv, n):
        """Waits until the gateway counted n ACK timeouts. The single loop of
        imchatd has then also queued and persisted their fallback, so the
        inboxes are settled for the next request."""
        deadline = time.monotonic() + 5
        while True:
            r = http(srv.port, "GET", "/metrics")
            self.assertEqual(r.status, 200, r)
            v = prom_value(r.body.decode(),
                           "imchat_gateway_ack_timeouts_total")
            if v >= n:
                return
            if time.monotonic() > deadline:
                raise AssertionError("%d ACK timeouts expected, %d counted"
                                     % (n, v))
            await asyncio.sleep(0.05)

    async def test_unacked_copy_to_senders_other_device(self):
        # doc/protocol.md: "The sender's own inbox never receives its own
        # messages; its other devices catch up from the conversation
        # history." A copy pushed to the sender's other device that is
        # never ACKed must not end up in the sender's inbox (1:1 and group).
        srv = self.server("--ack-timeout", "1")
        self.add_member(srv, "team", "alice")
        self.add_member(srv, "team", "carol")
        alice_phone = await self.client(srv, "alice", "phone")
        alice_laptop = await self.client(srv, "alice", "laptop")
        a = await alice_phone.sent(to="carol", body=b"carol is away")
        g = await alice_phone.sent(group="team", body=b"team, carol is away")
        for m in (a, g):
            st = await alice_phone.status(m.msg_id)
            self.assertEqual(st.state, pb().DeliveryStatus.STORED)
            await alice_laptop.deliver(m.msg_id)  # never ACKed
        await self.wait_ack_timeouts(srv, 2)
        self.assertEqual(ids(self.offline(srv, "carol")),
                         [a.msg_id, g.msg_id])
        self.assertEqual(ids(self.offline(srv, "alice")), [],
                         "the sender's inbox got its own messages")
    async def test_note_to_self(self):
        # A message to oneself: conversation p:alice:alice, pushed to the
        # user's other devices. The sender's own inbox never gets its
        # messages (doc/protocol.md): an un-ACKed copy is left to the
        # history, which the devices catch up from.
        srv = self.server("--ack-timeout", "1")
        alice_phone = await self.client(srv, "alice", "phone")
        alice_laptop = await self.client(srv, "alice", "laptop")
        s = await alice_phone.sent(to="alice", body=b"note to self")
        self.assertEqual((s.conversation_id, s.seq), ("p:alice:alice", 1))
        await alice_laptop.deliver(s.msg_id)  # never ACKed
        await alice_phone.no_deliver(s.msg_id, seconds=0)
        await alice_phone.no_status(s.msg_id, seconds=2)  # past the timeout
        # A STORED for a later message means the worker is past this one.
        m = await alice_phone.sent(to="nobody-here", body=b"marker")
        st = await alice_phone.status(m.msg_id)
        self.assertEqual(st.state, pb().DeliveryStatus.STORED, st)
        self.assertEqual(ids(self.offline(srv, "alice")), [])
        h = self.wait_page(lambda: self.history(srv, "p:alice:alice",
                                                "alice"),
                           lambda p: len(p["messages"]) == 1,
                           "history p:alice:alice")
        self.assertEqual(ids(h), [s.msg_id])
        r = http(srv.port, "GET",
                 "/v1/conversations/p:alice:alice/messages?after_seq=0",
                 bearer=token("carol"))
        self.assertJsonError(r, 403)


# ---------------------------------------------------------------------------
# 5. Resend dedup
# ---------------------------------------------------------------------------

class TestBackpressure(ChatTest):

    async def test_flood_does_not_starve_others(self):
        """One client floods sends (1500 in one go) without reading its answers: the
        gateway stops reading it once 64 sends are in flight (TCP then
        holds it back), its memory stays bounded, and another client's
        ping is still answered."""
        srv = self.server("--rate-limit", "1000000", "--rate-burst",
                          "1000000", "--user-rate-limit", "1000000",
                          "--user-rate-burst", "1000000")
        flooder = await self.client(srv, "flooder")
        other = await self.client(srv, "bystander")

        def rss_kib():
            with open("/proc/%d/status" % srv.proc.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
            raise AssertionError("no VmRSS")

        frames = []
        for i in range(1500):
            f = pb().ClientFrame(id=i + 1)
            f.send.client_msg_id = "flood-%d" % i
            f.send.user_id = "sink"  # offline: every send is stored
            f.send.body = b"x" * 200
            frames.append(f.SerializeToString())

        async def flood():
            for data in frames:
                await flooder.ws.send(data)

        rss_before = rss_kib()
        task = asyncio.ensure_future(flood())
        try:
            in_flight_max = paused_max = 0
            for i in range(5):
                fid = 1000 + i
                await send_frame(other.ws, imctest.ping_frame(fid))
                r = await other.next(lambda f, fid=fid: f.id == fid,
                                     "Pong %d" % fid)
                self.assertEqual(r.WhichOneof("body"), "pong")
                m = http(srv.port, "GET", "/metrics", bearer=ADMIN)
                self.assertEqual(m.status, 200, m)
                in_flight_max = max(in_flight_max, prom_value(
                    m.body.decode(), "imchat_gateway_sends_in_flight"))
                paused_max = max(paused_max, prom_value(
                    m.body.decode(), "imchat_gateway_paused_connections"))
                await asyncio.sleep(0.2)
            # The limit engaged (the flooder was paused at some sample)
            # and held: never more than 64 of its sends with the router.
            self.assertGreaterEqual(paused_max, 1)
            self.assertLessEqual(in_flight_max, 64)
            # The real bound is the gauge above; RSS is checked loosely,
            # as sanitizer builds keep freed memory in quarantine (up to
            # 256 MiB) and SQLite grows its cache with the inbox.
            self.assertLess(rss_kib() - rss_before, 1024 * 1024)
            # Let the flood finish (a send cancelled mid-frame would break
            # the stream) and read the flooder's answers and the STORED
            # status of each send, so that its closing handshake does not
            # wait behind a full receive queue.
            replies = stored = 0

            async def drain():
                nonlocal replies, stored
                while replies < len(frames) or stored < len(frames):
                    f = await flooder._read(IO_TIMEOUT)
                    if f is None:
                        continue
                    if f.id != 0:
                        replies += 1
                    elif f.WhichOneof("body") == "status":
                        stored += 1

            await asyncio.wait_for(asyncio.gather(task, drain()), 120)
            self.assertEqual((replies, stored), (len(frames), len(frames)))
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


class TestDedup(ChatTest):

    async def test_resend_same_client_msg_id(self):
        srv = self.server()
        alice = await self.client(srv, "alice")
        bob = await self.client(srv, "bob")
        a1 = await alice.sent(to="bob", body=b"once", cmid="dup-1")
        m = await bob.deliver(a1.msg_id)
        a2 = await alice.sent(to="bob", body=b"once", cmid="dup-1")
        self.assertEqual((a2.msg_id, a2.seq, a2.sent_at_ms,
                          a2.conversation_id, a2.client_msg_id),
                         (a1.msg_id, a1.seq, a1.sent_at_ms,
                          a1.conversation_id, "dup-1"))
        await bob.no_deliver()
        await bob.ack(m.msg_id)
        st = await alice.status(a1.msg_id)
        self.assertEqual(st.state, pb().DeliveryStatus.DELIVERED)
        await alice.no_status(a1.msg_id)
        # The next new message is seq 2: the resend took no seq.
        a3 = await alice.sent(to="bob", body=b"next", cmid="dup-2")
        self.assertEqual(a3.seq, 2)
        await bob.ack((await bob.deliver(a3.msg_id)).msg_id)

    async def test_resend_to_offline_recipient_stored_once(self):
        srv = self.server()
        alice = await self.client(srv, "alice")
        a1 = await alice.sent(to="carol", body=b"x", cmid="dup-3")
        await alice.status(a1.msg_id)
        a2 = await alice.sent(to="carol", body=b"x", cmid="dup-3")
        self.assertEqual((a2.msg_id, a2.seq), (a1.msg_id, a1.seq))
        # The resend gets the status again (the first may have been lost
        # with the connection), once; the message is stored once.
        st = await alice.status(a1.msg_id)
        self.assertEqual((st.state, st.user_id, st.client_msg_id),
                         (pb().DeliveryStatus.STORED, "carol", "dup-3"))
        await alice.no_status(a1.msg_id)
        self.assertEqual(ids(self.offline(srv, "carol")), [a1.msg_id])


# ---------------------------------------------------------------------------
# 6. ACK timeout
# ---------------------------------------------------------------------------

class TestAckTimeout(ChatTest):

    async def test_unacked_push_falls_back_to_inbox(self):
        srv = self.server("--ack-timeout", "1")
        alice = await self.client(srv, "alice")
        bob = await self.client(srv, "bob")
        a = await alice.sent(to="bob", body=b"are you there?")
        m = await bob.deliver(a.msg_id)
        pushed = time.monotonic()
        st = await alice.status(a.msg_id, timeout=5)
        waited = time.monotonic() - pushed
        self.assertEqual(st.state, pb().DeliveryStatus.STORED, st)
        self.assertEqual(st.user_id, "bob")
        self.assertGreater(waited, 0.8, "STORED before the ACK timeout")
        p = self.offline(srv, "bob")
        self.assertEqual(ids(p), [a.msg_id])
        self.assertMsg(p["messages"][0], m)
        # A late ACK changes nothing: the status was already sent.
        await bob.ack(m.msg_id)
        await alice.no_status(a.msg_id)


# ---------------------------------------------------------------------------
# 7. History
# ---------------------------------------------------------------------------

class TestHistory(ChatTest):

    async def test_conversation_history(self):
        srv = self.server()
        alice = await self.client(srv, "alice")
        bob = await self.client(srv, "bob")
        sent = []
        for i, (frm, to) in enumerate([(alice, "bob"), (bob, "alice"),
                                       (alice, "bob"), (alice, "bob")]):
            a = await frm.sent(to=to, body=b"h%d" % i)
            self.assertEqual(a.seq, i + 1)
            peer = bob if frm is alice else alice
            m = await peer.deliver(a.msg_id)
            await peer.ack(m.msg_id)
            sent.append(m)
        want = [m.msg_id for m in sent]

        p = self.wait_page(
            lambda: self.history(srv, "p:alice:bob", "alice"),
            lambda p: len(p["messages"]) == len(sent), "history p:alice:bob")
        self.assertEqual(ids(p), want)
        self.assertEqual([m["seq"] for m in p["messages"]], [1, 2, 3, 4])
        self.assertEqual([m["cursor"] for m in p["messages"]], [1, 2, 3, 4])
        for got, m in zip(p["messages"], sent):
            self.assertMsg(got, m)
        self.assertEqual((p["next_cursor"], p["has_more"]), (4, False))
        # Percent-encoded, and for the other participant.
        self.assertEqual(self.history(srv, "p%3Aalice%3Abob", "alice"), p)
        self.assertEqual(self.history(srv, "p%3aalice%3abob", "bob"), p)
        # Paging by seq.
        p2 = self.history(srv, "p:alice:bob", "bob", after=1, limit=2)
        self.assertEqual(ids(p2), want[1:3])
        self.assertEqual((p2["next_cursor"], p2["has_more"]), (3, True))
        p3 = self.history(srv, "p:alice:bob", "bob", after=4)
        self.assertEqual(p3, {"messages": [], "next_cursor": 4,
                              "has_more": False})

        # Not a participant.
        r = http(srv.port, "GET",
                 "/v1/conversations/p:alice:bob/messages?after_seq=0&limit=10",
                 bearer=token("carol"))
        self.assertJsonError(r, 403)
        r = http(srv.port, "GET",
                 "/v1/conversations/p:alice:bob/messages?after_seq=0")
        self.assertJsonError(r, 401)

        # Bad paging parameters.
        for q in ("limit=0", "limit=1001", "limit=abc", "limit=",
                  "limit=-1", "after_seq=x", "after_seq=-1"):
            with self.subTest(query=q):
                r = http(srv.port, "GET",
                         "/v1/conversations/p:alice:bob/messages?" + q,
                         bearer=token("alice"))
                self.assertJsonError(r, 400, "BAD_REQUEST")
                r = http(srv.port, "GET",
                         "/offline?" + q.replace("after_seq", "cursor"),
                         bearer=token("alice"))
                self.assertJsonError(r, 400, "BAD_REQUEST")
        for q in ("limit=1", "limit=1000"):
            r = http(srv.port, "GET",
                     "/v1/conversations/p:alice:bob/messages?" + q,
                     bearer=token("alice"))
            self.assertEqual(r.status, 200, r)

    async def test_group_history_members_only(self):
        srv = self.server()
        for u in ("alice", "bob"):
            self.add_member(srv, "team", u)
        alice = await self.client(srv, "alice")
        sent = []
        for i in range(3):
            a = await alice.sent(group="team", body=b"g%d" % i)
            st = await alice.status(a.msg_id)  # STORED: in the history
            self.assertEqual(st.state, pb().DeliveryStatus.STORED)
            sent.append(a.msg_id)
        for who in ("alice", "bob"):
            p = self.history(srv, "g:team", who)
            self.assertEqual(ids(p), sent)
            self.assertEqual([m["seq"] for m in p["messages"]], [1, 2, 3])
            self.assertEqual({m["group_id"] for m in p["messages"]},
                             {"team"})
        self.assertEqual(self.history(srv, "g%3Ateam", "bob"),
                         self.history(srv, "g:team", "bob"))
        for who in ("carol", "dave"):
            r = http(srv.port, "GET",
                     "/v1/conversations/g:team/messages?after_seq=0",
                     bearer=token(who))
            self.assertJsonError(r, 403)
        # A group that does not exist has no members.
        r = http(srv.port, "GET",
                 "/v1/conversations/g:nobody/messages?after_seq=0",
                 bearer=token("alice"))
        self.assertJsonError(r, 403)
        # Removed members lose access.
        self.remove_member(srv, "team", "bob")
        r = http(srv.port, "GET",
                 "/v1/conversations/g:team/messages?after_seq=0",
                 bearer=token("bob"))
        self.assertJsonError(r, 403)


# ---------------------------------------------------------------------------
# 8. kill -9 and restart
# ---------------------------------------------------------------------------

class TestDurability(ChatTest):

    async def test_kill9_restart(self):
        srv = self.server()
        for u in ("alice", "bob", "carol"):
            self.add_member(srv, "team", u)
        async with contextlib.AsyncExitStack() as st1:
            alice = await self.client(srv, "alice", stack=st1)
            bob = await self.client(srv, "bob", stack=st1)
            stored, p_seqs, g_seqs = [], [], []
            for i in range(3):
                a = await alice.sent(to="carol", body=b"offline %d" % i,
                                     cmid="k-%d" % i)
                s = await alice.status(a.msg_id)
                self.assertEqual(s.state, pb().DeliveryStatus.STORED)
                stored.append(a.msg_id)
                p_seqs.append(a.seq)
            for i in range(2):
                a = await alice.sent(group="team", body=b"group %d" % i)
                await bob.ack((await bob.deliver(a.msg_id)).msg_id)
                s = await alice.status(a.msg_id)
                self.assertEqual(s.state, pb().DeliveryStatus.STORED)
                stored.append(a.msg_id)
                g_seqs.append(a.seq)
            # Acknowledged, maybe not yet STORED: must survive too.
            last = await alice.sent(to="carol", body=b"just acked")
            stored.append(last.msg_id)
            p_seqs.append(last.seq)
            srv.kill()  # SIGKILL
            self.assertEqual(srv.proc.returncode, -signal.SIGKILL)
        self.assertEqual(p_seqs, [1, 2, 3, 4])
        self.assertEqual(g_seqs, [1, 2])

        srv2 = self.server(data_dir=srv.data_dir, name="imchatd (restarted)")
        p = self.wait_page(lambda: self.offline(srv2, "carol"),
                           lambda p: len(p["messages"]) >= len(stored),
                           "carol's inbox after kill -9")
        self.assertEqual(ids(p), stored)
        self.assertEqual(self.members(srv2, "team"),
                         ["alice", "bob", "carol"])

        alice = await self.client(srv2, "alice")
        bob = await self.client(srv2, "bob")
        dave = await self.client(srv2, "dave")
        a = await alice.sent(to="carol", body=b"after restart")
        self.assertEqual(a.conversation_id, "p:alice:carol")
        self.assertGreater(a.seq, max(p_seqs))
        self.assertNotIn(a.msg_id, stored)
        g = await bob.sent(group="team", body=b"group after restart")
        self.assertGreater(g.seq, max(g_seqs))
        await alice.ack((await alice.deliver(g.msg_id)).msg_id)
        fid = await dave.send(group="team", body=b"x")
        self.assertEqual((await dave.error(fid)).code, pb().Error.FORBIDDEN)
        # The dedup set survived: a resend gets the original answer.
        r = await alice.sent(to="carol", body=b"offline 0", cmid="k-0")
        self.assertEqual((r.msg_id, r.seq), (stored[0], 1))
        # The histories too, with the new messages after the old ones.
        h = self.wait_page(lambda: self.history(srv2, "g:team", "carol"),
                           lambda p: len(p["messages"]) == 3,
                           "history g:team after restart")
        self.assertEqual([m["seq"] for m in h["messages"]], g_seqs + [g.seq])
        h = self.wait_page(
            lambda: self.history(srv2, "p:alice:carol", "carol"),
            lambda p: len(p["messages"]) == 5,
            "history p:alice:carol after restart")
        self.assertEqual([m["seq"] for m in h["messages"]], p_seqs + [a.seq])


# ---------------------------------------------------------------------------
# 9. Bad inputs and limits
# ---------------------------------------------------------------------------

def raw_send_frame(fid, fields):
    """A ClientFrame with a SendRequest built from (field number, bytes)
    pairs, so that it can hold what a generated class would not let one
    write (both members of the oneof)."""
    def varint(n):
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def ld(num, data):
        return varint((num << 3) | 2) + varint(len(data)) + data
    inner = b"".join(ld(n, v) for n, v in fields)
    return varint((1 << 3) | 0) + varint(fid) + ld(10, inner)


class TestBadInput(ChatTest):

    async def test_bad_send_requests(self):
        srv = self.server()
        alice = await self.client(srv, "alice")
        E = pb().Error
        cases = [
            ("invalid user id", dict(to="bad id")),
            ("invalid group id", dict(group="bad/group")),
            ("user id too long", dict(to="u" * 65)),
            ("empty user id", dict(to="")),
            ("no recipient", dict()),
            ("empty client_msg_id", dict(to="bob", cmid="")),
            ("control char in client_msg_id", dict(to="bob", cmid="a\nb")),
            ("client_msg_id too long", dict(to="bob", cmid="c" * 129)),
            ("bad content_type", dict(to="bob", ctype="text/\x01")),
        ]
        for name, kw in cases:
            with self.subTest(case=name):
                fid = await alice.send(body=b"x", **kw)
                err = await alice.error(fid)
                self.assertEqual(err.code, E.BAD_REQUEST, err)
                self.assertTrue(err.message)
        # Both members of the oneof on the wire: no generated client can
        # write that, and proto3 parsing keeps the last member seen. The
        # server must treat the frame exactly as a protobuf parser reads it
        # (here: a 1:1 to bob, or a send to a group alice is not in), never
        # as a message with two recipients.
        vals = {2: b"bob", 3: b"team"}
        for order in ((2, 3), (3, 2)):
            with self.subTest(case="both recipients", order=order):
                fid = alice.next_id
                alice.next_id += 1
                data = raw_send_frame(
                    fid, [(1, b"both-%d" % order[0])] +
                    [(n, vals[n]) for n in order] + [(4, b"x")])
                parsed = pb().ClientFrame.FromString(data)
                await alice.send_raw(data)
                r = await alice.reply(fid)
                if parsed.send.WhichOneof("to") == "user_id":
                    self.assertEqual(r.WhichOneof("body"), "send_ack", r)
                    self.assertEqual(r.send_ack.conversation_id,
                                     "p:alice:bob")
                else:
                    self.assertEqual(r.WhichOneof("body"), "error", r)
                    self.assertEqual(r.error.code, E.FORBIDDEN, r)
        # The connection is still usable and nothing else was routed.
        a = await alice.sent(to="bob", body=b"fine")
        self.assertEqual(a.seq, 2)
        await alice.status(a.msg_id)
        p = self.offline(srv, "bob")
        self.assertEqual([base64.b64decode(m["body"]) for m in p["messages"]],
                         [b"x", b"fine"])

    async def test_strings_must_be_utf8_without_nul(self):
        # protobuf-c takes any bytes for a string field; the Python
        # library refuses to write these, so the frames are built by hand.
        srv = self.server()
        alice = await self.client(srv, "alice")
        E = pb().Error
        cases = [
            ("client_msg_id not UTF-8",
             [(1, b"bad\xff\xfe"), (2, b"bob"), (4, b"x")]),
            # Before the check both got the msg_id of "m": one was lost.
            ("client_msg_id with NUL (1)",
             [(1, b"m\x00first"), (2, b"bob"), (4, b"x")]),
            ("client_msg_id with NUL (2)",
             [(1, b"m\x00second"), (2, b"bob"), (4, b"x")]),
            # Before the check this went to user "bo".
            ("user_id with NUL", [(1, b"c-nul"), (2, b"bo\x00b"), (4, b"x")]),
            ("group_id not UTF-8",
             [(1, b"c-grp"), (3, b"te\xed\xa0\x80am"), (4, b"x")]),
            ("content_type overlong",
             [(1, b"c-ct"), (2, b"bob"), (4, b"x"), (5, b"text/\xc0\xaf")]),
        ]
        for name, fields in cases:
            with self.subTest(case=name):
                fid = alice.next_id
                alice.next_id += 1
                await alice.send_raw(raw_send_frame(fid, fields))
                err = await alice.error(fid)
                self.assertEqual(err.code, E.BAD_REQUEST, err)
        # A DeliverAck with a bad msg_id is refused the same way.
        fid = alice.next_id
        alice.next_id += 1
        await alice.send_raw(b"\x08" + bytes([fid]) +
                             b"\x5a\x03\x0a\x01\xff")
        err = await alice.error(fid)
        self.assertEqual(err.code, E.BAD_REQUEST, err)
        # Nothing was stored for anyone, and no counter moved.
        for user in ("bob", "bo"):
            self.assertEqual(self.offline(srv, user)["messages"], [], user)
        # The connection still works: the next send is the first message.
        a = await alice.sent(to="bob", body=b"fine")
        self.assertEqual(a.seq, 1)
        await alice.status(a.msg_id)
        p = self.offline(srv, "bob")
        self.assertEqual([base64.b64decode(m["body"]) for m in p["messages"]],
                         [b"fine"])
        self.assertEqual(self.offline(srv, "bo")["messages"], [])
        pp = self.offline(srv, "bob", proto=True)
        self.assertEqual([m.message.msg_id for m in pp.messages], [a.msg_id])

    async def test_body_too_large(self):
        srv = self.server("--max-body", "1024")
        alice = await self.client(srv, "alice")
        fid = await alice.send(to="bob", body=b"b" * 1025)
        err = await alice.error(fid)
        self.assertEqual(err.code, pb().Error.TOO_LARGE, err)
        a = await alice.sent(to="bob", body=b"b" * 1024)
        self.assertEqual(a.seq, 1)
        await alice.status(a.msg_id)
        p = self.offline(srv, "bob")
        self.assertEqual(ids(p), [a.msg_id])
        self.assertEqual(base64.b64decode(p["messages"][0]["body"]),
                         b"b" * 1024)

    async def test_rate_limit(self):
        # A slow refill (1 per second), so a loaded machine cannot refill
        # the bucket between the six quick sends.
        srv = self.server("--rate-limit", "1", "--rate-burst", "5")
        alice = await self.client(srv, "alice")
        fids = [await alice.send(to="bob", body=b"r%d" % i)
                for i in range(6)]
        replies = [await alice.reply(f) for f in fids]
        kinds = [r.WhichOneof("body") for r in replies]
        self.assertEqual(kinds, ["send_ack"] * 5 + ["error"], replies)
        self.assertEqual(replies[5].error.code, pb().Error.RATE_LIMITED)
        self.assertEqual([r.send_ack.seq for r in replies[:5]],
                         [1, 2, 3, 4, 5])
        # The bucket refills (1 per second): one more goes through.
        await asyncio.sleep(1.1)
        a = await alice.sent(to="bob", body=b"later")
        self.assertEqual(a.seq, 6)

    def filter_file(self):
        d = imctest.mkdtemp("filter")
        path = os.path.join(d, "words.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("# sensitive words\nbadword\n坏蛋\n")
        return path

    async def test_filter_reject(self):
        srv = self.server("--filter-file", self.filter_file())
        alice = await self.client(srv, "alice")
        bob = await self.client(srv, "bob")
        for body, ctype in [(b"this has a BadWord in it", "text/plain"),
                            ("你这个坏蛋".encode(), "text/plain"),
                            (b"badword", "text/markdown; charset=utf-8")]:
            with self.subTest(body=body, ctype=ctype):
                fid = await alice.send(to="bob", body=body, ctype=ctype)
                err = await alice.error(fid)
                self.assertEqual(err.code, pb().Error.BLOCKED, err)
        await bob.no_deliver(seconds=0.2)
        # Not text: passes unchanged. Text without a word: passes.
        for body, ctype in [(b"badword \xe5\x9d\x8f\xe8\x9b\x8b",
                             "application/octet-stream"),
                            (b"a perfectly good word", "text/plain")]:
            a = await alice.sent(to="bob", body=body, ctype=ctype)
            m = await bob.deliver(a.msg_id)
            self.assertEqual(m.body, body)
            await bob.ack(m.msg_id)

    async def test_filter_mask(self):
        srv = self.server("--filter-file", self.filter_file(),
                          "--filter-action", "mask")
        alice = await self.client(srv, "alice")
        bob = await self.client(srv, "bob")
        body = "hi BADWORD, 你是坏蛋吗".encode()
        a = await alice.sent(to="bob", body=body)
        m = await bob.deliver(a.msg_id)
        self.assertEqual(m.body, "hi *******, 你是**吗".encode())
        await bob.ack(m.msg_id)
        # What is stored is the masked body too.
        a2 = await alice.sent(to="carol", body="坏蛋 badword".encode())
        await alice.status(a2.msg_id)
        p = self.offline(srv, "carol")
        self.assertEqual(base64.b64decode(p["messages"][0]["body"]),
                         b"** *******")
        h = self.wait_page(lambda: self.history(srv, "p:alice:bob", "alice"),
                           lambda p: len(p["messages"]) == 1,
                           "history p:alice:bob")
        self.assertEqual(base64.b64decode(h["messages"][0]["body"]),
                         "hi *******, 你是**吗".encode())
        # Not text: unchanged.
        a3 = await alice.sent(to="bob", body=b"badword",
                              ctype="application/octet-stream")
        m3 = await bob.deliver(a3.msg_id)
        self.assertEqual(m3.body, b"badword")
        await bob.ack(m3.msg_id)

    async def test_filter_reloaded_on_sighup(self):
        path = self.filter_file()
        srv = self.server("--filter-file", path)
        alice = await self.client(srv, "alice")
        fid = await alice.send(to="bob", body=b"a newword here")
        r = await alice.reply(fid)  # not in the list yet
        self.assertEqual(r.WhichOneof("body"), "send_ack", r)
        with open(path, "w", encoding="utf-8") as f:
            f.write("newword\n")
        # The reload happens on the server's next loop iteration, which
        # logs it.
        srv.sighup(r"--filter-file: reloaded ")
        fid = await alice.send(to="bob", body=b"a newword here")
        self.assertEqual((await alice.error(fid)).code, pb().Error.BLOCKED)
        a = await alice.sent(to="bob", body=b"a badword now passes")
        self.assertTrue(a.msg_id)
        # A list that cannot be read keeps the current one.
        os.unlink(path)
        srv.sighup(r"--filter-file: .*the previous words stay")
        fid = await alice.send(to="bob", body=b"newword")
        self.assertEqual((await alice.error(fid)).code, pb().Error.BLOCKED)
        srv.check_alive("after SIGHUP")

    async def test_offline_auth(self):
        srv = self.server()
        bob = await self.client(srv, "bob")
        a = await bob.sent(to="alice", body=b"for alice only")
        await bob.status(a.msg_id)
        self.assertEqual(ids(self.offline(srv, "alice")), [a.msg_id])

        r = http(srv.port, "GET", "/offline?cursor=0&limit=100")
        self.assertJsonError(r, 401)
        for bad in ("garbage",
                    token("alice", secret="not-the-server-secret"),
                    token("alice", ttl=-3600)):
            r = http(srv.port, "GET", "/offline?cursor=0&limit=100",
                     bearer=bad)
            self.assertJsonError(r, 401)
        # Other users see their own inbox only, whatever the query says.
        for who in ("dave", "bob"):
            for q in ("cursor=0&limit=100", "cursor=0&user=alice",
                      "user_id=alice&cursor=0"):
                r = http(srv.port, "GET", "/offline?" + q,
                         bearer=token(who))
                self.assertEqual(r.status, 200, r)
                self.assertNotIn(a.msg_id.encode(), r.body)
                self.assertNotIn(b"for alice only", r.body)
                self.assertNotIn(base64.b64encode(b"for alice only"), r.body)


# ---------------------------------------------------------------------------
# 10. Encryption at rest
# ---------------------------------------------------------------------------

PLAINTEXT = b"the-eagle-lands-at-midnight-7c1f"


def db_rows_with(data_dir, needle):
    """(table, column) pairs of DATA_DIR/imchat.db whose values contain
    needle, read through SQLite (the server may still run: WAL)."""
    uri = "file:%s?mode=ro" % os.path.join(data_dir, "imchat.db")
    con = sqlite3.connect(uri, uri=True, timeout=10)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        hits = []
        for t in tables:
            cols = [r[1] for r in con.execute('PRAGMA table_info("%s")' % t)]
            for c in cols:
                for (v,) in con.execute('SELECT "%s" FROM "%s"' % (c, t)):
                    if isinstance(v, str):
                        v = v.encode()
                    if isinstance(v, bytes) and needle in v:
                        hits.append((t, c))
        return tables, hits
    finally:
        con.close()


class TestEncryptionAtRest(ChatTest):

    async def store_one(self, srv, group=False):
        alice = await self.client(srv, "alice")
        if group:
            self.add_member(srv, "team", "alice")
            self.add_member(srv, "team", "carol")
            a = await alice.sent(group="team", body=PLAINTEXT)
        else:
            a = await alice.sent(to="carol", body=PLAINTEXT)
        st = await alice.status(a.msg_id)
        self.assertEqual(st.state, pb().DeliveryStatus.STORED)
        p = self.offline(srv, "carol")
        self.assertEqual(ids(p)[-1], a.msg_id)
        self.assertEqual(base64.b64decode(p["messages"][-1]["body"]),
                         PLAINTEXT)
        pp = self.offline(srv, "carol", proto=True)
        self.assertEqual(pp.messages[-1].message.body, PLAINTEXT)
        return a

    async def test_control_plaintext_visible_without_key(self):
        # Shows that the scan below finds a body when nothing encrypts it.
        srv = self.server()
        await self.store_one(srv)
        tables, hits = db_rows_with(srv.data_dir, PLAINTEXT)
        self.assertIn(("messages", "body"), hits, tables)

    async def test_bodies_sealed_with_key_file(self):
        d = imctest.mkdtemp("keys")
        keys = os.path.join(d, "keys")
        with open(keys, "w") as f:
            f.write("k1 %s\n" % os.urandom(32).hex())
        os.chmod(keys, 0o600)
        srv = self.server("--key-file", keys)
        a = await self.store_one(srv)
        self.assertEqual(a.seq, 1)
        await self.store_one(srv, group=True)
        h = self.history(srv, "p:alice:carol", "carol")
        self.assertEqual(base64.b64decode(h["messages"][0]["body"]),
                         PLAINTEXT)
        tables, hits = db_rows_with(srv.data_dir, PLAINTEXT)
        self.assertIn("messages", tables)
        self.assertEqual(hits, [], "plaintext body readable in the database")
        # After a restart with the same key the bodies still open.
        srv.stop()
        srv2 = self.server("--key-file", keys, data_dir=srv.data_dir,
                           name="imchatd (--key-file, restarted)")
        p = self.offline(srv2, "carol")
        self.assertEqual([base64.b64decode(m["body"]) for m in p["messages"]],
                         [PLAINTEXT, PLAINTEXT])

    async def test_no_plaintext_in_database_files(self):
        # Not in the store, not in the offline queue, not in the WAL.
        d = imctest.mkdtemp("keys")
        keys = os.path.join(d, "keys")
        with open(keys, "w") as f:
            f.write("k1 %s\n" % os.urandom(32).hex())
        srv = self.server("--key-file", keys)
        await self.store_one(srv)
        found = []
        for name in sorted(os.listdir(srv.data_dir)):
            with open(os.path.join(srv.data_dir, name), "rb") as f:
                if PLAINTEXT in f.read():
                    found.append(name)
        self.assertEqual(found, [], "plaintext body in these files")


# ---------------------------------------------------------------------------
# 11. Metrics and readiness
# ---------------------------------------------------------------------------

class TestMetrics(ChatTest):

    async def test_metrics_after_traffic(self):
        srv = self.server()
        alice = await self.client(srv, "alice")
        bob = await self.client(srv, "bob")
        a = await alice.sent(to="bob", body=b"counted")
        await bob.ack((await bob.deliver(a.msg_id)).msg_id)
        await alice.status(a.msg_id)
        a2 = await alice.sent(to="carol", body=b"stored")
        await alice.status(a2.msg_id)

        r = http(srv.port, "GET", "/metrics")
        self.assertEqual(r.status, 200, r)
        self.assertTrue((r.header("content-type") or "")
                        .startswith("text/plain"), r)
        text = r.body.decode()
        self.assertRegex(text, r"(?m)^# TYPE imchat_router_sends_total "
                               r"counter$")
        self.assertEqual(prom_value(text, "imchat_router_sends_total"), 2)
        self.assertEqual(prom_value(text, "imchat_gateway_websockets"), 2)
        # The /metrics request itself is a connection too.
        self.assertGreaterEqual(
            prom_value(text, "imchat_gateway_connections"), 2)
        self.assertGreaterEqual(
            prom_value(text, "imchat_gateway_upgraded_total"), 2)
        self.assertGreaterEqual(
            prom_value(text, "imchat_gateway_pushes_total"), 1)
        self.assertGreaterEqual(
            prom_value(text, "imchat_gateway_acks_total"), 1)
        # Every ACK is in the latency histogram (on loopback, within 10 s).
        acks = prom_value(text, "imchat_gateway_acks_total")
        self.assertRegex(text, r"(?m)^# TYPE imchat_gateway_ack_latency_seconds"
                               r" histogram$")
        self.assertEqual(prom_value(
            text, "imchat_gateway_ack_latency_seconds_count"), acks)
        self.assertEqual(prom_value(
            text, "imchat_gateway_ack_latency_seconds_bucket", 'le="10"'), acks)
        self.assertEqual(prom_value(
            text, "imchat_gateway_ack_latency_seconds_bucket", 'le="+Inf"'),
            acks)
        self.assertGreaterEqual(
            prom_value(text, "imchat_router_routed_total", 'path="fast"'), 1)
        self.assertGreaterEqual(
            prom_value(text, "imchat_router_routed_total", 'path="slow"'), 1)
        self.assertEqual(prom_value(text, "imchat_router_statuses_total",
                                    'state="delivered"'), 1)
        self.assertEqual(prom_value(text, "imchat_router_statuses_total",
                                    'state="stored"'), 1)
        self.assertGreaterEqual(prom_value(text, "imchat_worker_jobs_total"),
                                2)
        self.assertEqual(prom_value(text, "imchat_worker_healthy"), 1)

        r = http(srv.port, "GET", "/readyz")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json().get("status"), "ready", r)
        r = http(srv.port, "GET", "/healthz")
        self.assertEqual(r.status, 200, r)


# ---------------------------------------------------------------------------
# 12. SIGTERM with a push in flight
# ---------------------------------------------------------------------------

class TestShutdown(ChatTest):

    async def test_sigterm_unacked_push_goes_to_inbox(self):
        srv = self.server()
        alice = await self.client(srv, "alice")
        bob = await self.client(srv, "bob")
        a = await alice.sent(to="bob", body=b"in flight")
        m = await bob.deliver(a.msg_id)  # never ACKed
        srv.proc.send_signal(signal.SIGTERM)
        for c in (bob, alice):
            code, _ = await expect_close(c.ws)
            self.assertEqual(code, 1001, c)
        rc = await asyncio.get_running_loop().run_in_executor(
            None, srv.wait_exit)
        self.assertEqual(rc, 0, srv.stderr_text())
        srv.check_sanitizers()

        srv2 = self.server(data_dir=srv.data_dir, name="imchatd (restarted)")
        p = self.offline(srv2, "bob")
        self.assertEqual(ids(p), [a.msg_id])
        self.assertMsg(p["messages"][0], m)
        self.assertEqual(ids(self.offline(srv2, "alice")), [])


# ---------------------------------------------------------------------------
# 13. An offline-queue backlog drains on an idle server
# ---------------------------------------------------------------------------

def _pb_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _pb_bytes(field, data):
    return _pb_varint(field << 3 | 2) + _pb_varint(len(data)) + data


def offline_job(msg, inbox_users):
    """An imchat.v1.OfflineJob (proto/imchat/v1/queue.proto) holding msg,
    encoded by hand: only im.proto is compiled for the tests."""
    job = _pb_bytes(1, msg.SerializeToString())
    for u in inbox_users:
        job += _pb_bytes(3, u.encode())
    return job


class _NoHealthz:
    """Stands in for imctest.http_get while a server starts, so that start
    waits only for the 'listening on' line and sends no request."""
    status = 200

    def __call__(self, *args, **kwargs):
        return self


class TestIdleBacklog(ChatTest):
    """The worker used to progress only when unrelated traffic woke the
    loop: each event let it persist at most 64 batches, then epoll_wait
    slept with the rest of the queue waiting. Here the queue holds more
    than that when the server starts; the server is started without a
    single request, and the test watches the database file itself, not
    the server, so that nothing but the server's own wakeups can move the
    worker on."""

    JOBS = 20000  # 79 batches of 256
    STALL_S = 10.0  # no commit for this long with records left: stalled
    DRAIN_S = 240.0

    def committed(self, path):
        """(committed offset of the worker, records left) read from the
        file; the connection is closed at once (a reader holding WAL
        snapshots open would slow the server's checkpoints)."""
        db = sqlite3.connect(path, timeout=10)
        try:
            row = db.execute("SELECT committed FROM queue_groups WHERE "
                             "topic = 'offline_msg' AND grp = 'worker'"
                             ).fetchone()
            left = db.execute("SELECT count(*) FROM queue WHERE "
                              "topic = 'offline_msg'").fetchone()[0]
        finally:
            db.close()
        return (row[0] if row else 0), left

    async def test_backlog_drains_without_traffic(self):
        srv = self.server()
        srv.stop()  # the schema exists; nothing is queued
        path = os.path.join(srv.data_dir, "imchat.db")
        now_ms = int(time.time() * 1000)
        rows = []
        for i in range(self.JOBS):
            m = pb().Message(msg_id="bl-%05d" % i,
                             conversation_id="p:alice:carol", seq=i + 1,
                             from_user="alice", to_user="carol",
                             body=b"backlog %d" % i,
                             content_type="text/plain", sent_at_ms=now_ms,
                             client_msg_id="bl-%d" % i,
                             from_device="default")
            rows.append((b"p:alice:carol", offline_job(m, ["carol"])))
        db = sqlite3.connect(path)
        with db:
            db.executemany("INSERT INTO queue(topic, key, value) "
                           "VALUES('offline_msg', ?, ?)", rows)
        last = db.execute("SELECT max(off) FROM queue").fetchone()[0]
        db.close()

        # No request until the queue is drained, not even /healthz at
        # start. Progress is read from the file once a second: the commits
        # must keep coming with nobody talking to the server.
        http_get = imctest.http_get
        imctest.http_get = _NoHealthz()
        try:
            srv2 = self.server(data_dir=srv.data_dir,
                               name="imchatd (backlog)")
        finally:
            imctest.http_get = http_get
        start = time.monotonic()
        seen, seen_at = self.committed(path)[0], start
        while True:
            off, left = self.committed(path)
            now = time.monotonic()
            if off >= last and left == 0:
                break
            if off != seen:
                seen, seen_at = off, now
            self.assertLess(now - seen_at, self.STALL_S,
                            "worker stalled on an idle server: committed "
                            "offset %d of %d, unchanged for %.0f s"
                            % (off, last, now - seen_at))
            self.assertLess(now - start, self.DRAIN_S,
                            "backlog not drained in %.0f s (committed %d "
                            "of %d)" % (self.DRAIN_S, off, last))
            time.sleep(1.0)
        srv2.check_alive("after the backlog")

        # Every job is fetchable.
        db = sqlite3.connect(path)
        try:
            n, top = db.execute("SELECT count(*), max(cursor) FROM inbox "
                                "WHERE user_id = 'carol'").fetchone()
        finally:
            db.close()
        self.assertEqual(n, self.JOBS)
        p = self.offline(srv2, "carol", limit=100)
        self.assertEqual(ids(p), ["bl-%05d" % i for i in range(100)])
        self.assertTrue(p["has_more"])
        p = self.offline(srv2, "carol", cursor=top - 3, limit=100)
        self.assertEqual(ids(p), ["bl-%05d" % i for i in
                                  range(self.JOBS - 3, self.JOBS)])
        self.assertFalse(p["has_more"])
        self.assertEqual(p["messages"][-1]["body"],
                         base64.b64encode(b"backlog %d"
                                          % (self.JOBS - 1)).decode())


if __name__ == "__main__":
    imctest.main()

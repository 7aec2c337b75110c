#!/usr/bin/python3
"""Authorization matrix of imchatd (SPEC 3.1-3.2, doc/protocol.md "Tokens"):
who may send to a group and read its history, whose 1:1 history and inbox
a token opens (checked by content), the admin API's token, one user's token
never acting as another, the time, issuer and audience claims at the
upgrade and on HTTP, and secrets that never reach the server's log.

test_chat.py already covers a non-member's send and history read, a
wrong admin token and a user JWT on the admin API, and ?user= on /offline;
the cases here go around those.

Run: IMCHATD=build/hosts/imchatd IMC_PROTO_DIR=proto/imchat/v1 \
     /usr/bin/python3 tests/e2e/test_authz.py [-k PATTERN]
"""

import base64
import os
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import websockets.exceptions  # noqa: E402

import imctest  # noqa: E402
from imctest import (http_raw, sign_hs256, upgrade_request,  # noqa: E402
                     welcome)
from test_chat import ADMIN, ChatTest, Client, http, ids, token  # noqa: E402


def pb():
    return imctest.pb()


def bodies(page):
    return sorted(base64.b64decode(m["body"]) for m in page["messages"])


# ---------------------------------------------------------------------------
# Groups: sending and reading need membership
# ---------------------------------------------------------------------------

class TestGroupAccess(ChatTest):

    async def test_non_member_send_leaves_no_trace(self):
        # The refused send takes no seq, reaches no member and is not in
        # the history; a group nobody created is refused the same way.
        srv = self.server()
        for u in ("alice", "bob"):
            self.add_member(srv, "crew", u)
        alice = await self.client(srv, "alice")
        bob = await self.client(srv, "bob")
        eve = await self.client(srv, "eve")
        for group in ("crew", "no-such-group"):
            fid = await eve.send(group=group, body=b"eve was here")
            err = await eve.error(fid)
            self.assertEqual(err.code, pb().Error.FORBIDDEN, err)
        await bob.no_deliver()
        a = await alice.sent(group="crew", body=b"members only")
        self.assertEqual(a.seq, 1, "the refused send took a seq")
        await alice.status(a.msg_id)  # STORED: in the history
        m = await bob.deliver(a.msg_id)
        self.assertEqual(m.body, b"members only")
        await eve.no_deliver(a.msg_id)
        p = self.history(srv, "g:crew", "bob")
        self.assertEqual(bodies(p), [b"members only"])
        self.assertEqual(self.offline(srv, "eve")["messages"], [])

    async def test_non_member_history_whatever_the_request_says(self):
        srv = self.server()
        for u in ("alice", "bob"):
            self.add_member(srv, "crew", u)
        alice = await self.client(srv, "alice")
        a = await alice.sent(group="crew", body=b"crew secret")
        await alice.status(a.msg_id)
        eve = token("eve")
        paths = ["/v1/conversations/g:crew/messages",
                 "/v1/conversations/g%3Acrew/messages?after_seq=0",
                 "/v1/conversations/g:crew/messages?user=alice",
                 "/v1/conversations/g:crew/messages?user_id=bob&sub=bob"]
        spoof = {"X-User-Id": "alice", "X-Forwarded-User": "alice",
                 "X-Imchat-User": "alice"}
        for path in paths:
            for headers in (None, spoof):
                with self.subTest(path=path, headers=headers):
                    r = http(srv.port, "GET", path, bearer=eve,
                             headers=headers)
                    self.assertJsonError(r, 403, "FORBIDDEN")
                    self.assertNotIn(a.msg_id.encode(), r.body)
                    self.assertNotIn(base64.b64encode(b"crew secret"),
                                     r.body)
        # Protobuf asked for: still a refusal, no page.
        r = http(srv.port, "GET", paths[0], bearer=eve,
                 headers={"Accept": "application/x-protobuf"})
        self.assertEqual(r.status, 403, r)
        self.assertNotIn(b"crew secret", r.body)
        # The members read it (control).
        self.assertEqual(bodies(self.history(srv, "g:crew", "bob")),
                         [b"crew secret"])

    async def test_member_added_later_reads_and_sends(self):
        # Membership is checked per request: refused before the PUT,
        # allowed after it.
        srv = self.server()
        self.add_member(srv, "crew", "alice")
        alice = await self.client(srv, "alice")
        a = await alice.sent(group="crew", body=b"before carol")
        await alice.status(a.msg_id)
        carol = await self.client(srv, "carol")
        fid = await carol.send(group="crew", body=b"early")
        self.assertEqual((await carol.error(fid)).code, pb().Error.FORBIDDEN)
        r = http(srv.port, "GET", "/v1/conversations/g:crew/messages",
                 bearer=token("carol"))
        self.assertJsonError(r, 403, "FORBIDDEN")
        self.add_member(srv, "crew", "carol")
        self.assertEqual(bodies(self.history(srv, "g:crew", "carol")),
                         [b"before carol"])
        c = await carol.sent(group="crew", body=b"hello crew")
        self.assertEqual(c.seq, 2)


# ---------------------------------------------------------------------------
# 1:1 history and inboxes: a token opens its own user's only
# ---------------------------------------------------------------------------

class TestPrivateData(ChatTest):

    async def test_inbox_is_the_tokens_user_only(self):
        srv = self.server()
        alice = await self.client(srv, "alice")
        for to in ("bob", "carol"):
            a = await alice.sent(to=to, body=b"only for " + to.encode())
            st = await alice.status(a.msg_id)
            self.assertEqual(st.state, pb().DeliveryStatus.STORED)
        spoofs = [("/offline", None),
                  ("/offline?user=carol", None),
                  ("/offline?user_id=carol&sub=carol&cursor=0", None),
                  ("/offline", {"X-User-Id": "carol",
                                "X-Forwarded-User": "carol"})]
        for path, headers in spoofs:
            for proto in (False, True):
                with self.subTest(path=path, headers=headers, proto=proto):
                    h = dict(headers or {})
                    if proto:
                        h["Accept"] = "application/x-protobuf"
                    r = http(srv.port, "GET", path, bearer=token("bob"),
                             headers=h)
                    self.assertEqual(r.status, 200, r)
                    if proto:
                        p = pb().OfflinePage()
                        p.ParseFromString(r.body)
                        got = [(m.message.to_user, m.message.body)
                               for m in p.messages]
                    else:
                        got = [(m["to_user"], base64.b64decode(m["body"]))
                               for m in r.json()["messages"]]
                    self.assertEqual(got, [("bob", b"only for bob")])
        # A user with no messages gets an empty page, not someone else's.
        for path, headers in spoofs:
            r = http(srv.port, "GET", path, bearer=token("dave"),
                     headers=headers)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["messages"], [], r)

    def test_two_authorization_headers(self):
        # Whatever the server makes of a second Authorization header, it
        # never serves the second user's inbox.
        srv = self.server()
        port = srv.port
        req = ("GET /offline HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
               "Authorization: Bearer %s\r\nAuthorization: Bearer %s\r\n"
               "Connection: close\r\n\r\n" % (port, token("dave"),
                                              token("carol")))
        r = http_raw(port, req)
        if r.status == 200:
            self.assertEqual(r.json()["messages"], [], r)
        else:
            self.assertIn(r.status, (400, 401), r)

    async def test_history_of_others_refused(self):
        srv = self.server()
        alice = await self.client(srv, "alice")
        bob = await self.client(srv, "bob")
        a = await alice.sent(to="bob", body=b"between alice and bob")
        m = await bob.deliver(a.msg_id)
        await bob.ack(m.msg_id)
        await alice.status(a.msg_id)
        self.wait_page(lambda: self.history(srv, "p:alice:bob", "bob"),
                       lambda p: len(p["messages"]) == 1, "history")
        conv = "/v1/conversations/%s/messages"
        for path in (conv % "p:alice:bob", conv % "p%3Aalice%3Abob",
                     conv % "p:alice:bob" + "?user=alice",
                     conv % "p:alice:bob" + "?after_seq=0&user_id=bob"):
            for headers in (None, {"X-User-Id": "alice"}):
                with self.subTest(path=path, headers=headers):
                    r = http(srv.port, "GET", path, bearer=token("carol"),
                             headers=headers)
                    self.assertJsonError(r, 403, "FORBIDDEN")
                    self.assertNotIn(a.msg_id.encode(), r.body)
        # carol's own conversations with them are hers, and empty.
        for conv_id in ("p:alice:carol", "p:bob:carol"):
            self.assertEqual(self.history(srv, conv_id, "carol")["messages"],
                             [])
        # The same conversation named out of byte order is no alias.
        r = http(srv.port, "GET", conv % "p:bob:alice", bearer=token("carol"))
        self.assertJsonError(r, 400, "BAD_REQUEST")
        r = http(srv.port, "GET", conv % "p:bob:alice", bearer=token("bob"))
        self.assertJsonError(r, 400, "BAD_REQUEST")


# ---------------------------------------------------------------------------
# One user's token never acts as another user
# ---------------------------------------------------------------------------

class TestIdentity(ChatTest):

    async def test_websocket_user_comes_from_the_token(self):
        srv = self.server()
        carol = await self.client(srv, "carol")
        # ?user= and identity headers are ignored; with both a header and
        # ?token=, the header's token counts (doc/protocol.md).
        ws = await self.stack.enter_async_context(srv.connect(
            token=token("alice"),
            query={"user": "bob", "user_id": "bob", "sub": "bob",
                   "token": token("bob")},
            headers={"X-User-Id": "bob", "X-Forwarded-User": "bob"}))
        w = (await welcome(ws)).welcome
        self.assertEqual(w.user_id, "alice")
        alice = Client(srv, "alice", "default", ws, w)
        a = await alice.sent(to="carol", body=b"from whom?")
        m = await carol.deliver(a.msg_id)
        self.assertEqual((m.from_user, m.to_user, m.conversation_id),
                         ("alice", "carol", "p:alice:carol"))
        # The token's device claim wins over ?device=.
        ws2 = await self.stack.enter_async_context(srv.connect(
            token=token("alice", device="phone"),
            query={"device": "laptop"}))
        self.assertEqual((await welcome(ws2)).welcome.device_id, "phone")

    async def test_ack_of_another_users_push_is_ignored(self):
        # eve ACKs a message pushed to bob (its id leaked somehow): alice
        # is not told DELIVERED, and bob still gets it through his inbox
        # once his own ACK does not come.
        srv = self.server("--ack-timeout", "1")
        alice = await self.client(srv, "alice")
        bob = await self.client(srv, "bob")
        eve = await self.client(srv, "eve")
        a = await alice.sent(to="bob", body=b"for bob's eyes")
        m = await bob.deliver(a.msg_id)
        await eve.ack(m.msg_id)
        st = await alice.status(a.msg_id)
        self.assertEqual(st.state, pb().DeliveryStatus.STORED, st)
        self.assertEqual(ids(self.offline(srv, "bob")), [a.msg_id])
        self.assertEqual(self.offline(srv, "eve")["messages"], [])
        await eve.no_deliver()

    def test_admin_token_is_no_user_token(self):
        srv = self.server()
        r = http(srv.port, "GET", "/offline", bearer=ADMIN)
        self.assertJsonError(r, 401, "UNAUTHENTICATED")
        r = http_raw(srv.port, upgrade_request(srv.port, token=ADMIN))
        self.assertJsonError(r, 401, "UNAUTHENTICATED")
        self.assertIsNone(r.header("sec-websocket-accept"), r)


# ---------------------------------------------------------------------------
# The admin API's token
# ---------------------------------------------------------------------------

class TestAdminToken(ChatTest):

    ROUTES = [("PUT", "/v1/groups/ops/members/mallory"),
              ("DELETE", "/v1/groups/ops/members/alice"),
              ("GET", "/v1/groups/ops/members")]

    def test_missing_or_malformed_401(self):
        srv = self.server()
        self.add_member(srv, "ops", "alice")
        cases = {
            "none": None,
            "empty bearer": "Bearer ",
            "scheme only": "Bearer",
            "basic": "Basic " + base64.b64encode(
                b"admin:" + ADMIN.encode()).decode(),
            "no scheme": ADMIN,
            "other scheme": "Token " + ADMIN,
        }
        for method, path in self.ROUTES:
            for name, value in cases.items():
                with self.subTest(method=method, auth=name):
                    headers = {"Authorization": value} if value else None
                    r = http(srv.port, method, path, headers=headers)
                    self.assertJsonError(r, 401, "UNAUTHENTICATED")
                    # RFC 6750 3.1: no error code without credentials.
                    self.assertEqual(r.header("www-authenticate"), "Bearer",
                                     r)
            with self.subTest(method=method, auth="elsewhere"):
                # Only the Authorization header carries it.
                r = http(srv.port, method, path + "?token=" + ADMIN,
                         headers={"X-Admin-Token": ADMIN,
                                  "Cookie": "token=" + ADMIN})
                self.assertJsonError(r, 401, "UNAUTHENTICATED")
        self.assertEqual(self.members(srv, "ops"), ["alice"])

    def test_wrong_token_403(self):
        srv = self.server()
        self.add_member(srv, "ops", "alice")
        wrong = [ADMIN[:-1], ADMIN + "x", ADMIN.upper(), " " + ADMIN,
                 ADMIN[:-1] + chr(ord(ADMIN[-1]) ^ 1), "x" * len(ADMIN),
                 token("alice")]
        for method, path in self.ROUTES:
            for bearer in wrong:
                with self.subTest(method=method, bearer=bearer):
                    r = http(srv.port, method, path, bearer=bearer)
                    self.assertJsonError(r, 403, "FORBIDDEN")
                    self.assertNotIn(b"mallory", r.body)
        self.assertEqual(self.members(srv, "ops"), ["alice"])

    def test_right_token_accepted(self):
        srv = self.server()
        r = http(srv.port, "PUT", self.ROUTES[0][1], bearer=ADMIN)
        self.assertEqual(r.status, 200, r)
        # The scheme is case-insensitive (RFC 9110 11.1).
        r = http(srv.port, "PUT", "/v1/groups/ops/members/alice",
                 headers={"Authorization": "bearer " + ADMIN})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.members(srv, "ops"), ["alice", "mallory"])
        r = http(srv.port, "DELETE", self.ROUTES[1][1], bearer=ADMIN)
        self.assertEqual(r.json(), {"group_id": "ops", "user_id": "alice",
                                    "member": False})
        self.assertEqual(self.members(srv, "ops"), ["mallory"])


# ---------------------------------------------------------------------------
# Token claims: time, issuer, audience (upgrade and HTTP)
# ---------------------------------------------------------------------------

ISS = "https://auth.e2e.example"
AUD = "imchat-e2e"


def claims_token(sub="alice", **over):
    now = int(time.time())
    c = {"sub": sub, "iat": now, "exp": now + 600, "iss": ISS, "aud": AUD}
    for k, v in over.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return sign_hs256(c)


class TestClaims(ChatTest):
    """A server with --jwt-issuer and --jwt-audience; 60 s of leeway on
    exp, nbf and iat (doc/protocol.md)."""

    def cases(self):
        now = int(time.time())
        bad = {
            "expired": claims_token(exp=now - 3600, iat=now - 7200),
            "expired past leeway": claims_token(exp=now - 120),
            "not yet valid": claims_token(nbf=now + 3600),
            "nbf past leeway": claims_token(nbf=now + 120),
            "issued in the future": claims_token(iat=now + 3600),
            "wrong issuer": claims_token(iss="https://evil.example"),
            "issuer prefix": claims_token(iss=ISS + ".evil"),
            "no issuer": claims_token(iss=None),
            "wrong audience": claims_token(aud="other-service"),
            "audience list without ours": claims_token(aud=["a", "b"]),
            "no audience": claims_token(aud=None),
            "issuer as number": claims_token(iss=1),
        }
        good = {
            "plain": claims_token(),
            "exp within leeway": claims_token(exp=now - 30),
            "nbf within leeway": claims_token(nbf=now + 30),
            "nbf passed": claims_token(nbf=now - 10),
            "audience list with ours": claims_token(aud=["x", AUD]),
        }
        return bad, good

    def test_refused_at_upgrade_and_on_http(self):
        srv = self.server("--jwt-issuer", ISS, "--jwt-audience", AUD)
        bad, good = self.cases()
        for name, tok in bad.items():
            with self.subTest(token=name, where="upgrade header"):
                r = http_raw(srv.port, upgrade_request(srv.port, token=tok))
                self.assertJsonError(r, 401, "UNAUTHENTICATED")
                self.assertEqual(r.header("www-authenticate"),
                                 'Bearer error="invalid_token"', r)
                self.assertIsNone(r.header("sec-websocket-accept"), r)
            with self.subTest(token=name, where="upgrade ?token="):
                r = http_raw(srv.port, upgrade_request(
                    srv.port, path="/ws?token=" + tok))
                self.assertJsonError(r, 401, "UNAUTHENTICATED")
            for path in ("/offline",
                         "/v1/conversations/p:alice:bob/messages"):
                with self.subTest(token=name, where=path):
                    r = http(srv.port, "GET", path, bearer=tok)
                    self.assertJsonError(r, 401, "UNAUTHENTICATED")
                    self.assertEqual(r.header("www-authenticate"),
                                     'Bearer error="invalid_token"', r)
        for name, tok in good.items():
            with self.subTest(token=name, where="upgrade"):
                r = http_raw(srv.port, upgrade_request(srv.port, token=tok))
                self.assertEqual(r.status, 101, r)
            with self.subTest(token=name, where="/offline"):
                r = http(srv.port, "GET", "/offline", bearer=tok)
                self.assertEqual(r.status, 200, r)

    async def test_client_library_refused(self):
        srv = self.server("--jwt-issuer", ISS, "--jwt-audience", AUD)
        bad, _ = self.cases()
        for name in ("expired", "not yet valid", "wrong issuer",
                     "wrong audience"):
            with self.subTest(token=name):
                with self.assertRaises(
                        websockets.exceptions.InvalidStatusCode) as cm:
                    async with srv.connect(token=bad[name]):
                        pass
                self.assertEqual(cm.exception.status_code, 401)
        async with srv.connect(token=claims_token("zoe")) as ws:
            self.assertEqual((await welcome(ws)).welcome.user_id, "zoe")


# ---------------------------------------------------------------------------
# Secrets never reach the log
# ---------------------------------------------------------------------------

JWT_SECRET = "log-scan-jwt-secret-5d0c9e71a2b3"
ADMIN_SECRET = "log-scan-admin-token-8f41c6e2d9"
KEY_HEX = "c0ffee" + "5a" * 29


class TestSecretsNotLogged(ChatTest):
    """imchatd at --log-level debug with a JWT secret, an admin token and
    a key file; every failure a client can cause, then a scan of the whole
    stderr (and of every answer) for the secrets and the tokens sent."""

    def test_no_secret_in_stderr(self):
        d = imctest.mkdtemp("keys")
        keys = os.path.join(d, "keys")
        with open(keys, "w") as f:
            f.write("k1 %s\n" % KEY_HEX)
        srv = imctest.Server(
            "--admin-token", ADMIN_SECRET, "--key-file", keys,
            "--log-level", "debug", secret=JWT_SECRET,
            name="imchatd (log scan)").start()
        self.servers.append(srv)
        port = srv.port
        now = int(time.time())

        def tok(sub, secret=JWT_SECRET, **c):
            base = {"sub": sub, "iat": now, "exp": now + 600}
            base.update(c)
            return sign_hs256(base, secret=secret)

        sent = {
            "good": tok("alice"),
            "good query": tok("bob"),
            "wrong secret": tok("alice", secret="guessed-secret-123456"),
            "expired": tok("alice", exp=now - 3600),
            "not yet valid": tok("alice", nbf=now + 3600),
            "bad sub": tok("no spaces"),
            "tampered": tok("alice")[:-4] + "AAAA",
            "oversized": "e30." + "A" * 5000 + ".sig",
            "admin guess": "admin-guess-" + ADMIN_SECRET[:8],
        }
        answers = []

        def keep(r):
            answers.append(r.raw)
            return r

        # Upgrades: good (header and query), bad.
        for name in ("good", "wrong secret", "expired", "not yet valid",
                     "bad sub", "tampered", "oversized"):
            keep(http_raw(port, upgrade_request(port, token=sent[name])))
        for name in ("good query", "wrong secret", "expired"):
            keep(http_raw(port, upgrade_request(
                port, path="/ws?token=" + sent[name])))
        # The HTTP API: user routes with good and bad tokens, the admin
        # routes with the user's token, a guess, the JWT secret, and the
        # right admin token.
        for name in ("good", "wrong secret", "expired", "tampered",
                     "oversized"):
            keep(http(port, "GET", "/offline?cursor=0", bearer=sent[name]))
            keep(http(port, "GET", "/v1/conversations/g:ops/messages",
                      bearer=sent[name]))
        for bearer in (sent["good"], sent["admin guess"], JWT_SECRET,
                       ADMIN_SECRET):
            keep(http(port, "PUT", "/v1/groups/ops/members/alice",
                      bearer=bearer))
            keep(http(port, "GET", "/v1/groups/ops/members", bearer=bearer))
        keep(http(port, "GET", "/v1/groups/ops/members?token=" +
                  ADMIN_SECRET))
        keep(http(port, "GET", "/metrics"))
        # A key file that no longer parses: the reload keeps the old keys
        # and must not quote the file.
        with open(keys, "w") as f:
            f.write("k2 %s-not-hex\n" % KEY_HEX)
        srv.sighup(r"--key-file: .*previous keys stay")
        srv.stop()

        with srv._lock:  # the whole stderr: nothing was dropped
            lines = list(srv._lines)
            self.assertEqual(len(lines), srv._seen)
        log = "\n".join(lines)
        # The scan can see the tokens' users: the log is not empty.
        self.assertIn("token refused", log)
        self.assertIn("wrong admin token", log)
        needles = {"jwt secret": JWT_SECRET, "admin token": ADMIN_SECRET,
                   "key": KEY_HEX}
        for name, t in sent.items():
            needles["token " + name] = t
            if t.count(".") == 2 and len(t.rsplit(".", 1)[1]) > 8:
                needles["signature of " + name] = t.rsplit(".", 1)[1]
        for what, needle in needles.items():
            with self.subTest(secret=what):
                self.assertNotIn(needle, log, "%s in the log:\n%s"
                                 % (what, srv.stderr_text()))
                for raw in answers:
                    self.assertNotIn(needle.encode(), raw)

    def test_bad_key_file_not_quoted(self):
        # A key file that does not load stops the server (exit 2); its
        # message names the file, not its content.
        d = imctest.mkdtemp("keys")
        keys = os.path.join(d, "keys")
        with open(keys, "w") as f:
            f.write("k1 %s\nk2 %szz\n" % (KEY_HEX, KEY_HEX[:60]))
        s = imctest.Server("--key-file", keys, "--admin-token", ADMIN_SECRET,
                           secret=JWT_SECRET, name="imchatd (bad key file)")
        with self.assertRaises(imctest.ServerDied) as cm:
            s.start()
        self.assertEqual(s.proc.returncode, 2)
        text = str(cm.exception)
        self.assertIn("--key-file", text)
        # The command line is quoted by the test helper; the log is not.
        log = text.split("--- imchatd (bad key file) stderr", 1)[1]
        for needle in (KEY_HEX, KEY_HEX[:60], JWT_SECRET, ADMIN_SECRET):
            self.assertNotIn(needle, log)


if __name__ == "__main__":
    imctest.main()

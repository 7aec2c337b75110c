#!/usr/bin/python3
"""Protocol conformance of imchatd's gateway, byte by byte over raw sockets:
WebSocket framing and close codes (RFC 6455, in the categories of the
Autobahn testsuite), HTTP/1.1 request rules (RFC 9110, RFC 9112), the Origin
allow-list, the connection limits, a message to oneself, and
permessage-deflate (RFC 7692) with python3-websockets and raw frames.

Run: IMCHATD=build/hosts/imchatd IMC_PROTO_DIR=proto/imchat/v1 \
     /usr/bin/python3 tests/e2e/test_conformance.py [-k PATTERN]
"""

import os
import re
import socket
import struct
import sys
import time
import zlib

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imctest  # noqa: E402
from imctest import (IO_TIMEOUT, http_get, http_raw, sign_hs256,  # noqa: E402
                     upgrade_request)

SRV = None  # the server of the tests that need no flags


def setUpModule():
    global SRV
    SRV = imctest.Server(name="imchatd (shared)").start()


def tearDownModule():
    if SRV is not None:
        SRV.stop()


def pb():
    return imctest.pb()


def token(sub, ttl=600):
    now = int(time.time())
    return sign_hs256({"sub": sub, "iat": now, "exp": now + ttl})


# ---------------------------------------------------------------------------
# A raw WebSocket client: every byte on the wire is the test's
# ---------------------------------------------------------------------------

MASK = b"\x37\xfa\x21\x3d"


def frame(opcode, payload=b"", fin=True, rsv=0, masked=True, length=None):
    """A client frame. length forces the length field: ("16", n) or ("64", n)
    writes n in that form whatever the payload is."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if masked else 0
    n = len(payload)
    if length is not None:
        form, n = length
        head = (struct.pack("!BBH", b0, mbit | 126, n) if form == "16"
                else struct.pack("!BBQ", b0, mbit | 127, n))
    elif n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not masked:
        return head + payload
    body = bytes(c ^ MASK[i % 4] for i, c in enumerate(payload))
    return head + MASK + body


def deflate(data):
    """A compressed message (RFC 7692 7.2.1): raw deflate, sync flush, the
    final 00 00 ff ff left out."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate(data):
    return zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")


class RawWS:
    """One upgraded connection on a plain socket."""

    def __init__(self, port, user="alice", extra=None, source=None):
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=IO_TIMEOUT,
            source_address=(source, 0) if source else None)
        self.sock.sendall(upgrade_request(port, token=token(user),
                                          extra=extra).encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("closed during the upgrade: %r"
                                     % self.buf)
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head.decode("latin-1")
        self.status = int(self.head.split(" ", 2)[1])
        if self.status == 101:
            f = self.server_frame()
            if f.WhichOneof("body") != "welcome":
                raise AssertionError("first frame is not Welcome: %s" % f)
            return
        # A refusal: the body, up to the close.
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.buf += chunk
        except ConnectionResetError:
            pass

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the connection; have %r"
                               % self.buf)
            self.buf += chunk

    def recv_frame(self):
        """(fin, opcode, payload) of the next server frame."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        if b1 & 0x80:
            raise AssertionError("the server masked a frame")
        n, off = b1 & 0x7f, 2
        if n == 126:
            self._need(4)
            n, off = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
        self._need(off + n)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        self.rsv1 = bool(b0 & 0x40)  # of the last frame: compressed
        return bool(b0 & 0x80), b0 & 0x0f, payload

    def server_frame(self):
        """The next binary frame as a ServerFrame (pings skipped)."""
        while True:
            fin, op, payload = self.recv_frame()
            if op == 9:
                continue
            if op != 2:
                raise AssertionError("expected a binary frame, got opcode "
                                     "%d: %r" % (op, payload))
            if self.rsv1:
                payload = inflate(payload)
            f = pb().ServerFrame()
            f.ParseFromString(payload)
            return f

    def send_cf(self, cf):
        self.send(frame(2, cf.SerializeToString()))

    def expect_close(self, code):
        """The next frames up to a close frame; its code must be code, and
        the server must then close the TCP connection. Returns the reason."""
        while True:
            fin, op, payload = self.recv_frame()
            if op == 8:
                break
            if op not in (2, 9, 10):
                raise AssertionError("unexpected opcode %d before the close"
                                     % op)
        got = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 \
            else None
        if got != code:
            raise AssertionError("close code %r, expected %d (reason %r)"
                                 % (got, code, payload[2:]))
        # Answer like a client; the server closes the socket (at once
        # after a protocol error, after our close otherwise).
        try:
            self.send(frame(8, payload[:2]))
        except OSError:
            pass
        if self.buf:
            raise AssertionError("data after the close frame: %r" % self.buf)
        try:
            chunk = self.sock.recv(65536)
            if chunk:
                raise AssertionError("data after the close frame: %r"
                                     % chunk)
        except ConnectionResetError:
            pass
        except socket.timeout:
            raise AssertionError("the server did not close the connection "
                                 "after close code %d" % code)
        return payload[2:]


class ServerCase(imctest.AsyncTestCase):
    server = None

    def setUp(self):
        self.server = SRV
        self.server.check_alive("before the test")

    def tearDown(self):
        self.server.check_alive("after " + self.id())

    def ws(self, **kw):
        w = RawWS(self.server.port, **kw)
        self.addCleanup(w.close)
        self.assertEqual(w.status, 101, w.head)
        return w


# ---------------------------------------------------------------------------
# WebSocket (RFC 6455)
# ---------------------------------------------------------------------------

class TestFraming(ServerCase):
    """Autobahn 2.x, 3.x, 4.x, 5.x: control frames, reserved bits and
    opcodes, fragmentation; and the length rules of 5.2."""

    def test_ping_126_bytes_1002(self):
        # 5.5: "All control frames MUST have a payload length of 125 bytes
        # or less" (Autobahn 2.5).
        w = self.ws()
        w.send(frame(9, b"x" * 126))
        w.expect_close(1002)

    def test_ping_125_bytes_answered(self):
        # 5.5.2/5.5.3: the pong carries the ping's payload (Autobahn 2.4).
        w = self.ws()
        w.send(frame(9, b"y" * 125))
        fin, op, payload = w.recv_frame()
        self.assertEqual((fin, op, payload), (True, 10, b"y" * 125))

    def test_fragmented_ping_1002(self):
        # 5.5: "Control frames MUST NOT be fragmented" (Autobahn 5.1).
        w = self.ws()
        w.send(frame(9, b"ab", fin=False))
        w.expect_close(1002)

    def test_ping_between_fragments(self):
        # 5.4: control frames may be injected in a fragmented message
        # (Autobahn 5.6).
        w = self.ws()
        cf = pb().ClientFrame(id=3)
        cf.ping.client_time_ms = 42
        data = cf.SerializeToString()
        w.send(frame(2, data[:1], fin=False) + frame(9, b"p") +
               frame(0, data[1:]))
        fin, op, payload = w.recv_frame()
        self.assertEqual((op, payload), (10, b"p"))
        f = w.server_frame()
        self.assertEqual((f.id, f.WhichOneof("body")), (3, "pong"), f)

    def test_continuation_without_message_1002(self):
        w = self.ws()  # 5.4 (Autobahn 5.9)
        w.send(frame(0, b"ab"))
        w.expect_close(1002)

    def test_new_message_inside_fragmented_1002(self):
        w = self.ws()  # 5.4 (Autobahn 5.18)
        w.send(frame(2, b"ab", fin=False) + frame(2, b"cd"))
        w.expect_close(1002)

    def test_reserved_bits_1002(self):
        # 5.2: RSV1-3 MUST be 0 without a negotiated extension
        # (Autobahn 3.1-3.7).
        for rsv in (1, 2, 4, 7):
            with self.subTest(rsv=rsv):
                w = self.ws()
                w.send(frame(2, b"ab", rsv=rsv))
                w.expect_close(1002)

    def test_reserved_opcodes_1002(self):
        # 5.2: opcodes 3-7 and 0xB-0xF are reserved (Autobahn 4.1-4.2).
        for op in (3, 5, 7, 0xb, 0xf):
            with self.subTest(opcode=op):
                w = self.ws()
                w.send(frame(op, b"ab"))
                w.expect_close(1002)

    def test_unmasked_frame_1002(self):
        w = self.ws()  # 5.1: a client MUST mask every frame
        w.send(frame(2, b"ab", masked=False))
        w.expect_close(1002)

    def test_length_top_bit_1002(self):
        # 5.2: "the most significant bit MUST be 0"; no payload follows,
        # the header alone decides.
        w = self.ws()
        w.send(frame(2, b"", length=("64", (1 << 63) | 5))[:10])
        w.expect_close(1002)

    def test_length_not_minimal_1002(self):
        # 5.2: "the minimal number of bytes MUST be used to encode the
        # length".
        for form, n in (("16", 5), ("16", 125), ("64", 200), ("64", 65535)):
            with self.subTest(form=form, n=n):
                w = self.ws()
                w.send(frame(2, b"z" * n, length=(form, n)))
                w.expect_close(1002)

    def test_huge_length_1009_before_payload(self):
        # 10.4 and 7.4.1: a frame announcing 2^63-1 bytes is refused at its
        # header with 1009; the server waits for none of them.
        w = self.ws()
        w.send(frame(2, b"", length=("64", (1 << 63) - 1))[:10])
        w.expect_close(1009)

    def test_text_frame_1003(self):
        w = self.ws()  # SPEC 3.1: binary only
        w.send(frame(1, b"hello"))
        w.expect_close(1003)


class TestClose(ServerCase):
    """Autobahn 7.x: the closing handshake and close codes."""

    def test_close_echoes_valid_codes(self):
        # 7.4.1 and the IANA registry: 1012-1014 are registered; the
        # server answers with the code it received (5.5.1).
        for code in (1000, 1001, 1003, 1007, 1011, 1012, 1013, 1014, 3000,
                     3999, 4000, 4999):
            with self.subTest(code=code):
                w = self.ws()
                w.send(frame(8, struct.pack("!H", code) + b"bye"))
                w.expect_close(code)

    def test_close_invalid_codes_1002(self):
        # 7.4.1/7.4.2: 0-999 unused, 1004-1006 and 1015 never sent, 1016-2999
        # unassigned, 5000+ undefined (Autobahn 7.9).
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999,
                     5000, 65535):
            with self.subTest(code=code):
                w = self.ws()
                w.send(frame(8, struct.pack("!H", code)))
                w.expect_close(1002)

    def test_close_one_byte_1002(self):
        w = self.ws()  # 5.5.1: a body starts with a 2-byte code (Autobahn 7.3.2)
        w.send(frame(8, b"\x03"))
        w.expect_close(1002)

    def test_close_empty_answered_1000(self):
        w = self.ws()  # Autobahn 7.3.1
        w.send(frame(8))
        w.expect_close(1000)

    def test_close_reason_not_utf8_1007(self):
        # 5.5.1, 8.1: the reason is UTF-8; invalid data is 1007
        # (Autobahn 7.5.1).
        w = self.ws()
        w.send(frame(8, struct.pack("!H", 1000) + b"\xce\xba\xe1\xbd\xb9\xcf"
                     b"\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"))
        w.expect_close(1007)

    def test_close_reason_utf8_accepted(self):
        w = self.ws()  # Autobahn 7.3.4-7.3.5
        w.send(frame(8, struct.pack("!H", 1000) + "κόσμε".encode()))
        w.expect_close(1000)


# ---------------------------------------------------------------------------
# HTTP/1.1 (RFC 9110, RFC 9112)
# ---------------------------------------------------------------------------

def raw(port, lines, body=b""):
    return http_raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)


class TestHTTP(ServerCase):

    def assertError(self, r, status, code=None):
        self.assertEqual(r.status, status, r)
        err = r.json()["error"]
        if code is not None:
            self.assertEqual(err["code"], code, r)
        self.assertIsNone(r.header("sec-websocket-accept"), r)

    def test_host_missing_400(self):
        # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request
        # without Host.
        port = self.server.port
        self.assertError(raw(port, ["GET /healthz HTTP/1.1"]), 400,
                         "BAD_REQUEST")
        up = upgrade_request(port, token=token("alice"))
        up = re.sub(r"Host: [^\r]*\r\n", "", up)
        self.assertError(http_raw(port, up), 400, "BAD_REQUEST")

    def test_host_twice_or_invalid_400(self):
        # RFC 9112 3.2: nor more than one Host line, nor an invalid value.
        port = self.server.port
        for hosts in (["Host: a", "Host: a"], ["Host: a", "Host: b"],
                      ["Host: a b"], ["Host: a/b"], ["Host: a:99999"]):
            with self.subTest(hosts=hosts):
                self.assertError(raw(port, ["GET /healthz HTTP/1.1"] + hosts),
                                 400)

    def test_http10_without_host(self):
        r = raw(self.server.port, ["GET /healthz HTTP/1.0"])
        self.assertEqual(r.status, 200, r)

    def test_absolute_form_upgrade(self):
        # RFC 9112 3.2.2: "A server MUST accept the absolute-form".
        port = self.server.port
        for target in ("http://127.0.0.1:%d/ws" % port,
                       "HTTP://localhost/ws?device=abs"):
            with self.subTest(target=target):
                s = socket.create_connection(("127.0.0.1", port),
                                             timeout=IO_TIMEOUT)
                self.addCleanup(s.close)
                req = upgrade_request(port, token=token("alice"))
                s.sendall(req.replace("GET /ws ", "GET %s " % target, 1)
                          .encode())
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = s.recv(4096)
                    self.assertTrue(chunk, data)
                    data += chunk
                self.assertTrue(data.startswith(b"HTTP/1.1 101 "), data)
        r = http_get(port, "http://127.0.0.1:%d/healthz" % port)
        self.assertEqual(r.status, 200, r)

    def test_conflicting_content_length_400(self):
        # RFC 9112 6.3 / RFC 9110 8.6: differing values, in two lines or a
        # list, make the framing invalid.
        port = self.server.port
        tok = token("alice")
        for cls in (["Content-Length: 1", "Content-Length: 2"],
                    ["Content-Length: 2, 1"], ["Content-Length: 1,1"]):
            with self.subTest(cls=cls):
                r = raw(port, ["PUT /v1/groups/g/members/alice HTTP/1.1",
                               "Host: x", "Authorization: Bearer " + tok] +
                        cls, b"ab")
                self.assertError(r, 400, "BAD_REQUEST")

    def test_head_like_get(self):
        # RFC 9110 9.3.2: HEAD gets GET's header fields, Content-Length
        # included, and no content.
        port = self.server.port
        tok = token("headcheck")
        for path, hdrs in (("/healthz", {}), ("/readyz", {}),
                           ("/offline", {"Authorization": "Bearer " + tok}),
                           ("/nope", {})):
            with self.subTest(path=path):
                g = http_get(port, path, hdrs)
                lines = ["HEAD %s HTTP/1.1" % path, "Host: x"] + \
                    ["%s: %s" % kv for kv in hdrs.items()]
                h = raw(port, lines)
                self.assertEqual(h.status, g.status, h)
                self.assertEqual(h.header("content-length"),
                                 str(len(g.body)), h)
                self.assertEqual(h.header("content-type"),
                                 g.header("content-type"), h)
                self.assertEqual(h.body, b"", h)

    def test_head_ws_405(self):
        # RFC 6455 4.1: the handshake is a GET.
        r = raw(self.server.port, ["HEAD /ws HTTP/1.1", "Host: x"])
        self.assertEqual(r.status, 405, r)
        self.assertEqual(r.header("allow"), "GET", r)
        self.assertEqual(r.body, b"", r)

    def test_401_challenges(self):
        # RFC 9110 11.6.1: every 401 carries WWW-Authenticate; RFC 6750 3.1:
        # error="invalid_token" for a bad token, no error code when none
        # was sent.
        port = self.server.port
        r = http_raw(port, upgrade_request(port))
        self.assertError(r, 401, "UNAUTHENTICATED")
        self.assertEqual(r.header("www-authenticate"), "Bearer", r)
        r = http_raw(port, upgrade_request(port, token="a.b.c"))
        self.assertError(r, 401)
        self.assertEqual(r.header("www-authenticate"),
                         'Bearer error="invalid_token"', r)
        r = http_get(port, "/offline")
        self.assertError(r, 401)
        self.assertEqual(r.header("www-authenticate"), "Bearer", r)
        r = http_get(port, "/offline", {"Authorization": "Bearer a.b.c"})
        self.assertError(r, 401)
        self.assertEqual(r.header("www-authenticate"),
                         'Bearer error="invalid_token"', r)

    def test_bad_websocket_key_400(self):
        # RFC 6455 4.2.1: the key decodes to exactly 16 bytes.
        port = self.server.port
        good = "dGhlIHNhbXBsZSBub25jZQ=="
        for key in ("AAAAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAA",
                    "dGhlIHNhbXBsZSBub25jZR==", "dGhlIHNhbXBsZSBub25j-Q==",
                    good + "\r\nSec-WebSocket-Key: " + good):
            with self.subTest(key=key):
                up = upgrade_request(port, token=token("alice"))
                r = http_raw(port, up.replace(good, key, 1))
                self.assertError(r, 400, "BAD_REQUEST")


# ---------------------------------------------------------------------------
# Origin allow-list (RFC 6455 10.2, cross-site WebSocket hijacking)
# ---------------------------------------------------------------------------

class TestOrigin(imctest.AsyncTestCase):

    @classmethod
    def setUpClass(cls):
        cls.srv = imctest.Server("--allowed-origin", "https://Chat.Example.com",
                                 "--allowed-origin", "http://localhost:9999",
                                 name="imchatd (origins)").start()

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def tearDown(self):
        self.srv.check_alive("after " + self.id())

    def upgrade(self, srv, origin=None):
        extra = {"Origin": origin} if origin is not None else None
        w = RawWS(srv.port, extra=extra)
        self.addCleanup(w.close)
        return w

    def test_listed_origin_upgrades(self):
        for origin in ("https://chat.example.com",
                       "https://CHAT.example.com:443", "http://localhost:9999"):
            with self.subTest(origin=origin):
                self.assertEqual(self.upgrade(self.srv, origin).status, 101)

    def test_no_origin_upgrades(self):
        # Clients that are not browsers send no Origin.
        self.assertEqual(self.upgrade(self.srv).status, 101)

    def test_own_origin_upgrades(self):
        # The page imchatd serves itself: the Origin of the request's Host.
        self.assertEqual(
            self.upgrade(self.srv, "http://127.0.0.1:%d" % self.srv.port)
            .status, 101)

    def test_other_origin_403(self):
        for origin in ("https://evil.example", "http://chat.example.com",
                       "https://chat.example.com:8443", "null",
                       "http://127.0.0.1:%d" % (self.srv.port + 1)):
            with self.subTest(origin=origin):
                w = self.upgrade(self.srv, origin)
                self.assertEqual(w.status, 403, w.head)
                self.assertIn('"FORBIDDEN"', w.buf.decode())
        m = http_get(self.srv.port, "/metrics").body.decode()
        self.assertRegex(m, r'imchat_gateway_refused_total\{reason="origin"\} '
                            r'[1-9]')

    def test_no_list_allows_all(self):
        w = self.upgrade(SRV, "https://evil.example")
        self.assertEqual(w.status, 101, w.head)

    def test_bad_origin_flag_exits_2(self):
        s = imctest.Server("--allowed-origin", "https://a.example/path",
                           name="imchatd (bad origin)")
        with self.assertRaises(imctest.ServerDied) as cm:
            s.start()
        self.assertIn("is not an origin", str(cm.exception))
        self.assertEqual(s.proc.returncode, 2)


# ---------------------------------------------------------------------------
# Connection limits
# ---------------------------------------------------------------------------

def metric(port, pattern):
    m = re.search(pattern + r" (\d+)", http_get(port, "/metrics").body.decode())
    return int(m.group(1)) if m else None


def wait_websockets(port, n):
    """Waits for the gateway to hold n WebSocket connections."""
    deadline = time.monotonic() + IO_TIMEOUT
    while metric(port, r"imchat_gateway_websockets") != n:
        if time.monotonic() > deadline:
            raise AssertionError("the gateway does not reach %d WebSockets" % n)
        time.sleep(0.02)


class TestLimits(imctest.AsyncTestCase):

    def start(self, *flags):
        srv = imctest.Server(*flags, name="imchatd (limits)").start()
        self.addCleanup(srv.stop)
        return srv

    def open(self, srv, source=None):
        w = RawWS(srv.port, source=source)
        self.addCleanup(w.close)
        return w

    def test_max_connections_503(self):
        srv = self.start("--max-connections", "2")
        a, b = self.open(srv), self.open(srv)
        self.assertEqual((a.status, b.status), (101, 101))
        c = self.open(srv)
        self.assertEqual(c.status, 503, c.head)
        self.assertRegex(c.head, r"(?im)^Retry-After: \d+$")
        self.assertIn('"UNAVAILABLE"', c.buf.decode())
        # Plain HTTP is still served.
        self.assertEqual(http_get(srv.port, "/healthz").status, 200)
        self.assertEqual(metric(srv.port, r'imchat_gateway_refused_total'
                                          r'\{reason="max_connections"\}'), 1)
        a.close()
        wait_websockets(srv.port, 1)
        self.assertEqual(self.open(srv).status, 101)

    def test_max_connections_per_ip_503(self):
        # 127.0.0.2 is another loopback address: another peer.
        srv = self.start("--max-connections-per-ip", "1")
        a = self.open(srv)
        self.assertEqual(a.status, 101)
        b = self.open(srv)
        self.assertEqual(b.status, 503, b.head)
        self.assertRegex(b.head, r"(?im)^Retry-After: \d+$")
        self.assertEqual(self.open(srv, source="127.0.0.2").status, 101)
        self.assertEqual(
            metric(srv.port, r'imchat_gateway_refused_total'
                             r'\{reason="max_connections_per_ip"\}'), 1)
        a.close()
        wait_websockets(srv.port, 1)
        self.assertEqual(self.open(srv).status, 101)

    def test_bad_limit_flag_exits_2(self):
        s = imctest.Server("--max-connections-per-ip", "-1",
                           name="imchatd (bad)")
        with self.assertRaises(imctest.ServerDied) as cm:
            s.start()
        self.assertIn("--max-connections-per-ip: '-1' is not a number",
                      str(cm.exception))
        self.assertEqual(s.proc.returncode, 2)


# ---------------------------------------------------------------------------
# permessage-deflate (RFC 7692; doc/protocol.md)
# ---------------------------------------------------------------------------

PMD = {"Sec-WebSocket-Extensions": "permessage-deflate"}
PMD_ANSWER = ("permessage-deflate; server_no_context_takeover; "
              "client_no_context_takeover")


class TestDeflate(ServerCase):

    async def chat(self, a, b, body, fid):
        """a sends body to bob (b); returns bob's Deliver and a's SendAck.
        """
        cf = pb().ClientFrame(id=fid)
        cf.send.client_msg_id = "z-%d" % fid
        cf.send.user_id = "bob-z"
        cf.send.body = body
        await imctest.send_frame(a, cf)
        ack, _ = await imctest.recv_reply(a, fid)
        self.assertEqual(ack.WhichOneof("body"), "send_ack", ack)
        while True:
            f = await imctest.recv_frame(b)
            if f.WhichOneof("body") == "deliver":
                break
        self.assertEqual(f.deliver.message.body, body)
        self.assertEqual(f.deliver.message.msg_id, ack.send_ack.msg_id)
        done = pb().ClientFrame()
        done.deliver_ack.msg_ids.append(f.deliver.message.msg_id)
        await imctest.send_frame(b, done)
        return f

    async def test_websockets_round_trip(self):
        # python3-websockets negotiates the extension and compresses every
        # message it sends; the server's pushes over 1 KiB come compressed.
        srv = self.server
        async with srv.connect(token("alice-z"), compression="deflate") as a, \
                srv.connect(token("bob-z"), compression="deflate") as b:
            for ws in (a, b):
                self.assertEqual(ws.response_headers.get(
                    "Sec-WebSocket-Extensions"), PMD_ANSWER)
                self.assertEqual([e.name for e in ws.extensions],
                                 ["permessage-deflate"])
                await imctest.welcome(ws)
            await self.chat(a, b, b"hi", 1)
            await self.chat(a, b, b"a long line of chat text. " * 200, 2)

    def test_raw_push_compressed_above_1k(self):
        a = self.ws(user="alice-r", extra=PMD)
        b = self.ws(user="bob-r", extra=PMD)
        self.assertIn("Sec-WebSocket-Extensions: " + PMD_ANSWER, b.head)
        for n, compressed in ((100, False), (5000, True)):
            cf = pb().ClientFrame(id=n)
            cf.send.client_msg_id = "r-%d" % n
            cf.send.user_id = "bob-r"
            cf.send.body = b"x" * n
            # Compressed on the way in too.
            a.send(frame(2, deflate(cf.SerializeToString()), rsv=4))
            f = a.server_frame()
            self.assertEqual(f.WhichOneof("body"), "send_ack", f)
            while True:
                f = b.server_frame()
                if f.WhichOneof("body") == "deliver":
                    break
            self.assertEqual(b.rsv1, compressed, n)
            self.assertEqual(f.deliver.message.body, b"x" * n)

    def test_client_without_extension(self):
        w = self.ws(user="plain-z")
        self.assertNotIn("Sec-WebSocket-Extensions", w.head)
        w.send(frame(2, deflate(ping_bytes(1)), rsv=4))
        w.expect_close(1002)

    def test_bomb_1009(self):
        # 10 MiB of zeros is about 10 KiB compressed: within the limit on
        # the wire, refused once it inflates past the limit.
        w = self.ws(extra=PMD)
        bomb = deflate(b"\0" * (10 << 20))
        self.assertLess(len(bomb), 16 << 10)
        w.send(frame(2, bomb, rsv=4))
        w.expect_close(1009)
        self.server.check_alive("after the bomb")

    def test_invalid_data_1007(self):
        w = self.ws(extra=PMD)
        w.send(frame(2, b"\xff\xff\xff\xff", rsv=4))
        w.expect_close(1007)

    def test_rsv1_on_continuation_1002(self):
        w = self.ws(extra=PMD)
        z = deflate(ping_bytes(2))
        w.send(frame(2, z[:1], fin=False, rsv=4) + frame(0, z[1:], rsv=4))
        w.expect_close(1002)

    def test_declined_offer_still_upgrades(self):
        w = self.ws(extra={"Sec-WebSocket-Extensions":
                           "permessage-deflate; server_max_window_bits=16"})
        self.assertNotIn("Sec-WebSocket-Extensions", w.head)


def ping_bytes(fid):
    cf = pb().ClientFrame(id=fid)
    cf.ping.client_time_ms = 1
    return cf.SerializeToString()


class TestDeflateFlag(imctest.AsyncTestCase):

    def test_deflate_off(self):
        srv = imctest.Server("--deflate", "off", name="imchatd (no deflate)")
        srv.start()
        self.addCleanup(srv.stop)
        w = RawWS(srv.port, extra=PMD)
        self.addCleanup(w.close)
        self.assertEqual(w.status, 101, w.head)
        self.assertNotIn("Sec-WebSocket-Extensions", w.head)

    def test_bad_value_exits_2(self):
        s = imctest.Server("--deflate", "yes", name="imchatd (bad)")
        with self.assertRaises(imctest.ServerDied) as cm:
            s.start()
        self.assertIn("--deflate: 'yes' is not on or off", str(cm.exception))
        self.assertEqual(s.proc.returncode, 2)


# ---------------------------------------------------------------------------
# A message to oneself (doc/protocol.md: never in one's own inbox)
# ---------------------------------------------------------------------------

class TestSelfMessage(ServerCase):

    def send(self, w, fid, to, cmid):
        cf = pb().ClientFrame(id=fid)
        cf.send.client_msg_id = cmid
        cf.send.user_id = to
        cf.send.body = b"note to self"
        w.send_cf(cf)
        frames = []
        while True:
            f = w.server_frame()
            frames.append(f)
            if f.id == fid:
                self.assertEqual(f.WhichOneof("body"), "send_ack", f)
                return f.send_ack, frames

    def test_not_in_own_inbox(self):
        port = self.server.port
        w = self.ws(user="selfie")
        mine, _ = self.send(w, 1, "selfie", "self-1")
        # A message to an offline user after it: its STORED status means
        # the worker got past the first one's jobs too (one queue, in
        # order).
        other, frames = self.send(w, 2, "nobody-online", "self-2")
        while not any(f.WhichOneof("body") == "status" and
                      f.status.msg_id == other.msg_id for f in frames):
            frames.append(w.server_frame())
        st = [f.status for f in frames if f.WhichOneof("body") == "status"
              and f.status.msg_id == other.msg_id][0]
        self.assertEqual(st.state, pb().DeliveryStatus.STORED, st)
        tok = {"Authorization": "Bearer " + token("selfie")}
        page = http_get(port, "/offline", tok).json()
        self.assertEqual(page["messages"], [], page)
        # Not lost: the conversation's history has it.
        hist = http_get(port, "/v1/conversations/p:selfie:selfie/messages",
                        tok).json()
        self.assertEqual([m["msg_id"] for m in hist["messages"]],
                         [mine.msg_id], hist)
        self.assertEqual(len(http_get(port, "/offline", {
            "Authorization": "Bearer " + token("nobody-online")})
            .json()["messages"]), 1)


if __name__ == "__main__":
    imctest.main()

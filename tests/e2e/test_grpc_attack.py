#!/usr/bin/python3
"""HTTP/2 attacks on the cluster's gRPC ports (doc/grpc.md, "Limits and
defences"), from a raw-socket client that writes the frames itself,
against im-service (imchat.v1.Router) and im-gateway (imchat.v1.Gateway)
as they run:
  - the SETTINGS a connection opens with announce the stream and header
    bounds;
  - HTTP/2 Rapid Reset (CVE-2023-44487): streams opened and reset at
    once, past 1000 resets a second, get GOAWAY ENHANCE_YOUR_CALM and
    the connection closed;
  - a CONTINUATION flood (CVE-2024-28182): a header block that never
    ends is cut off after 8 CONTINUATION frames;
  - after each, the process still answers stock gRPC calls and the
    cluster's processes are all alive.

Run like tests/e2e/test_cluster.py (same environment).
"""

import os
import select
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imctest  # noqa: E402
from test_cluster_grpc import (  # noqa: E402
    grpc, grpc_address, router_pb2, router_pb2_grpc)
from test_cluster import ClusterTest  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY, CONTINUATION = 0, 1, 3, 4, 7, 9
END_STREAM, END_HEADERS = 0x1, 0x4
CANCEL, ENHANCE_YOUR_CALM = 0x8, 0xb
SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_HEADER_LIST_SIZE = 0x3, 0x6


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + \
        struct.pack(">BBI", ftype, flags, stream) + payload


def literal(name, value):
    """An HPACK literal field without indexing, new name, no Huffman
    (RFC 7541 6.2.2); short strings only."""
    name, value = name.encode(), value.encode()
    assert len(name) < 127 and len(value) < 127
    return bytes([0, len(name)]) + name + bytes([len(value)]) + value


def request_head(authority, path):
    return b"".join(literal(k, v) for k, v in (
        (":method", "POST"), (":scheme", "http"), (":path", path),
        (":authority", authority), ("content-type", "application/grpc"),
        ("te", "trailers")))


class Conn:
    """One raw HTTP/2 connection: writes frames, reads the server's."""

    def __init__(self, address):
        host, port = address.rsplit(":", 1)
        self.authority = address
        self.sock = socket.create_connection((host, int(port)),
                                             timeout=imctest.IO_TIMEOUT)
        self.buf = b""
        self.seen = []  # parsed, not yet handed out
        self.closed = False
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))

    def send(self, data):
        """False once the server has closed (what it sent before stays
        readable)."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _fill(self, timeout):
        if self.closed:
            return False
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return True
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        return True

    def _parse(self):
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                return
            ftype, flags, stream = struct.unpack(">BBI", self.buf[3:9])
            self.seen.append((ftype, flags, stream & 0x7fffffff,
                              self.buf[9:9 + n]))
            self.buf = self.buf[9 + n:]

    def frames(self, timeout=imctest.IO_TIMEOUT):
        """The server's frames, (type, flags, stream, payload), until it
        closes or timeout seconds pass."""
        end = time.monotonic() + timeout
        while True:
            self._parse()
            while self.seen:
                yield self.seen.pop(0)
            left = end - time.monotonic()
            if left <= 0 or not self._fill(min(left, 0.2)):
                self._parse()
                yield from self.seen
                self.seen = []
                return

    def stopped(self):
        """Whether, by now, the server has closed or sent GOAWAY (the
        frames read on the way are kept for frames())."""
        while not self.closed and \
                select.select([self.sock], [], [], 0)[0]:
            self._fill(0)
        self._parse()
        return self.closed or any(f[0] == GOAWAY for f in self.seen)

    def close(self):
        self.sock.close()


class TestGrpcAttack(ClusterTest):

    def setUp(self):
        self.conns = []

    def tearDown(self):
        for c in self.conns:
            c.close()

    def targets(self):
        """(host, a method of its service) for im-service and a gateway."""
        return [(self.cluster.service, "/imchat.v1.Router/GroupMembers"),
                (self.gw[0], "/imchat.v1.Gateway/Deliver")]

    def connect(self, host):
        c = Conn(grpc_address(host))
        self.conns.append(c)
        return c

    def assert_serves(self):
        """im-service answers a stock call; every process is alive."""
        ch = grpc.insecure_channel(grpc_address(self.cluster.service))
        try:
            router = router_pb2_grpc.RouterStub(ch)
            reply = router.GroupMembers(
                router_pb2.GroupRequest(group_id="attack-" + self.cluster.tag),
                timeout=imctest.IO_TIMEOUT)
            self.assertEqual(list(reply.user_ids), [])
        finally:
            ch.close()
        self.cluster.check("after the attack")

    async def test_settings_announce_bounds(self):
        for host, _ in self.targets():
            c = self.connect(host)
            for ftype, flags, _, payload in c.frames():
                if ftype == SETTINGS and not flags & 0x1:  # not an ACK
                    break
            else:
                self.fail("no SETTINGS from %s" % host.name)
            settings = dict(struct.unpack(">HI", payload[i:i + 6])
                            for i in range(0, len(payload), 6))
            self.assertEqual(settings.get(SETTINGS_MAX_CONCURRENT_STREAMS),
                             1000, host.name)
            self.assertEqual(settings.get(SETTINGS_MAX_HEADER_LIST_SIZE),
                             16384, host.name)

    async def test_rapid_reset(self):
        for host, path in self.targets():
            c = self.connect(host)
            head = request_head(c.authority, path)
            stream, sent = 1, 0
            # Pairs of HEADERS + RST_STREAM, 100 at a time, until the
            # server answers: well past 1000 in one second.
            while not c.stopped() and sent < 20000:
                burst = b"".join(
                    frame(HEADERS, END_HEADERS, s, head) +
                    frame(RST_STREAM, 0, s, struct.pack(">I", CANCEL))
                    for s in range(stream, stream + 200, 2))
                stream += 200
                sent += 100
                if not c.send(burst):
                    break
            goaway = [p for t, _, _, p in c.frames() if t == GOAWAY]
            self.assertTrue(c.closed, "%s kept the connection" % host.name)
            self.assertTrue(goaway, "no GOAWAY from %s after %d resets" %
                            (host.name, sent))
            code = struct.unpack(">I", goaway[-1][4:8])[0]
            self.assertEqual(code, ENHANCE_YOUR_CALM, host.name)
            self.assertGreater(sent, 1000, host.name)
            self.assert_serves()

    async def test_continuation_flood(self):
        for host, path in self.targets():
            c = self.connect(host)
            head = request_head(c.authority, path)
            filler = literal("x-flood", "y" * 100)
            n = 0
            ok = c.send(frame(HEADERS, 0, 1, head))
            # One CONTINUATION at a time, none ending the block, until the
            # server has had enough.
            while ok and n < 1000 and not c.stopped():
                ok = c.send(frame(CONTINUATION, 0, 1, filler))
                n += 1
            for _ in c.frames():
                pass
            self.assertTrue(c.closed, "%s kept reading an endless header "
                            "block (%d CONTINUATION frames)" % (host.name, n))
            self.assert_serves()


if __name__ == "__main__":
    imctest.main()

"""A backend vtable written in Python: imchat.KeySource (imc_keysrc_vtbl)
behind a real imc_gateway, driven in this process.

The gateway has no JWT secret of its own, so every token is verified with
the key the Python key source returns: an upgrade with a token signed by
that key gets 101 and the Welcome frame, any other answer of the key
source gets 401. The gateway's transport is a Python vtable too (cffi
callbacks that collect the bytes the gateway writes).
"""

import contextlib
import unittest

import support  # noqa: F401

import imchat
from imchat import errors
from imchat._lib import ffi, lib

SECRET = b"key-from-python-0123456789"


@ffi.callback("ssize_t(void *, void *, const struct iovec *, int)")
def _send(ud, conn_ud, iov, iovcnt):
    gw = ffi.from_handle(ud)
    n = 0
    for i in range(iovcnt):
        gw.out += ffi.buffer(iov[i].iov_base, iov[i].iov_len)
        n += iov[i].iov_len
    return n


@ffi.callback("void(void *, void *)")
def _close(ud, conn_ud):
    ffi.from_handle(ud).closed = True


class MemGateway:
    """An imc_gateway with one connection whose bytes stay in memory."""

    def __init__(self, keysrc):
        self.out = bytearray()
        self.closed = False
        self.keysrc = keysrc  # the gateway borrows it
        self._handle = ffi.new_handle(self)
        self._vt = ffi.new("imc_transport_vtbl *", {
            "struct_size": ffi.sizeof("imc_transport_vtbl"),
            "send": _send, "close": _close})
        opt_p = ffi.new("imc_gateway_options **")
        errors.check(lib.imc_gateway_options_new(opt_p, ffi.NULL))
        try:
            errors.check(lib.imc_gateway_options_set_transport(
                opt_p[0], self._vt, self._handle))
            errors.check(lib.imc_gateway_options_set_keysrc(
                opt_p[0], keysrc.vtable, keysrc.ud))
            gw_p = ffi.new("imc_gateway **")
            errors.check(lib.imc_gateway_new(gw_p, opt_p[0], ffi.NULL))
        finally:
            lib.imc_gateway_options_del(opt_p[0])
        self.gw = gw_p[0]
        conn_p = ffi.new("imc_conn **")
        errors.check(lib.imc_gateway_conn_new(self.gw, conn_p, ffi.NULL))
        self.conn = conn_p[0]

    def upgrade(self, token):
        req = ("GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n"
               "Authorization: Bearer %s\r\n\r\n" % token).encode()
        lib.imc_gateway_conn_recv(self.gw, self.conn,
                                  ffi.from_buffer("uint8_t[]", req), len(req))
        errors.check(lib.imc_gateway_flush(self.gw))
        return bytes(self.out)

    def close(self):
        lib.imc_gateway_del(self.gw)


class PythonKeySource(unittest.TestCase):
    def upgrade(self, lookup, token):
        calls = []

        def recorded(alg, kid):
            calls.append((alg, kid))
            return lookup(alg, kid)

        ks = imchat.KeySource(recorded)
        gw = MemGateway(ks)
        try:
            answer = gw.upgrade(token)
            self.assertEqual(lib.imc_gateway_pending(gw.gw), 0)
            return answer, calls, gw.closed
        finally:
            gw.close()

    def test_token_verified_with_the_python_key(self):
        token = imchat.sign_token(SECRET, "alice")
        answer, calls, closed = self.upgrade(lambda alg, kid: SECRET, token)
        self.assertEqual(calls, [("HS256", "")])
        head, _, rest = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), answer)
        # RFC 6455's example key and its accept value.
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                      head)
        self.assertEqual(rest[:1], b"\x82")  # a binary frame: the Welcome
        self.assertIn(b"alice", rest)
        self.assertFalse(closed)

    def test_str_key(self):
        token = imchat.sign_token(SECRET, "alice")
        answer, _, _ = self.upgrade(lambda alg, kid: SECRET.decode(), token)
        self.assertTrue(answer.startswith(b"HTTP/1.1 101 "), answer)

    def test_other_key_is_refused(self):
        token = imchat.sign_token(b"another secret", "alice")
        answer, calls, closed = self.upgrade(lambda alg, kid: SECRET, token)
        self.assertEqual(calls, [("HS256", "")])
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer)
        self.assertTrue(closed)

    def test_no_key(self):
        token = imchat.sign_token(SECRET, "alice")
        answer, calls, closed = self.upgrade(lambda alg, kid: None, token)
        self.assertEqual(len(calls), 1)
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer)
        self.assertTrue(closed)

    def test_lookup_errors(self):
        token = imchat.sign_token(SECRET, "alice")

        def unavailable(alg, kid):
            raise errors.Unavailable("key server down")

        def broken(alg, kid):
            raise ValueError("bug in the key source")

        for lookup in (unavailable, broken):
            with self.subTest(lookup=lookup.__name__):
                with self.assertLogs("imchat.keysrc", "ERROR") \
                        if lookup is broken else contextlib.nullcontext():
                    answer, calls, closed = self.upgrade(lookup, token)
                self.assertEqual(len(calls), 1)
                self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer)
                self.assertTrue(closed)

    def test_subclass(self):
        class Keys(imchat.KeySource):
            def lookup(self, alg, kid):
                return SECRET if alg == "HS256" else None

        gw = MemGateway(Keys())
        try:
            answer = gw.upgrade(imchat.sign_token(SECRET, "bob"))
        finally:
            gw.close()
        self.assertTrue(answer.startswith(b"HTTP/1.1 101 "), answer)


if __name__ == "__main__":
    unittest.main(verbosity=2)

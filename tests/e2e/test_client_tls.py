#!/usr/bin/python3
"""End-to-end tests of the imchat CLI over TLS: wss:// for the WebSocket
(OpenSSL in the runner) and https:// for the offline sync and history
(libcurl's multi interface), against a real imchatd behind a TLS-terminating
proxy (Python's ssl module) with a certificate from a CA made here with
`openssl`. Also: certificate checks on by default (an unknown CA, a name
that does not match, a server that does not speak TLS: exit code 6 with a
clear message), --insecure, and the WebSocket served while an offline page
is still being fetched.

Run: IMCHATD=build/hosts/imchatd IMCHAT_CLI=build/hosts/imchat \
     IMC_PROTO_DIR=proto/imchat/v1 /usr/bin/python3 tests/e2e/test_client_tls.py
"""

import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import unittest

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imctest  # noqa: E402
from imctest import IO_TIMEOUT, mkdtemp  # noqa: E402

CLI = os.environ.get("IMCHAT_CLI", "")
EXIT_TLS = 6
_SANITIZER_RE = re.compile(
    r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:")


def openssl(*args, cwd):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError("openssl %s failed:\n%s" % (args[0], r.stderr))


def make_pki(d):
    """A CA (ca.pem) and two server certificates signed by it: good.pem
    for 127.0.0.1 and localhost, other.pem for other.example only."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=imchat test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, san in (("good", "IP:127.0.0.1,DNS:localhost"),
                      ("other", "DNS:other.example")):
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write("subjectAltName=%s\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=digitalSignature\n"
                    "extendedKeyUsage=serverAuth\n" % san)
        openssl("req", *ec, "-keyout", name + ".key", "-out", name + ".csr",
                "-subj", "/CN=" + name, cwd=d)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem",
                "-CAkey", "ca.key", "-set_serial",
                "2" if name == "good" else "3", "-days", "2",
                "-extfile", name + ".ext", "-out", name + ".pem", cwd=d)


class TlsProxy:
    """Terminates TLS on 127.0.0.1:<port> and passes the bytes on to the
    server's plain port. With hold_offline set, a connection whose first
    bytes are `GET /offline` is not passed on until release()."""

    def __init__(self, upstream_port, cert, key):
        self.up = upstream_port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.hold_offline = False
        self.offline_seen = threading.Event()
        self.loop = asyncio.new_event_loop()
        # Handshakes the client refuses are expected here: keep quiet.
        self.loop.set_exception_handler(lambda loop, ctx: None)
        self.thread = threading.Thread(target=self.loop.run_forever,
                                       daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(
            self._start(), self.loop).result(IO_TIMEOUT)

    async def _start(self):
        self.released = asyncio.Event()
        self.server = await asyncio.start_server(
            self._conn, "127.0.0.1", 0, ssl=self.ctx)
        return self.server.sockets[0].getsockname()[1]

    @staticmethod
    async def _pump(src, dst, other):
        try:
            while True:
                d = await src.read(65536)
                if not d:
                    break
                dst.write(d)
                await dst.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            dst.close()
            other.close()

    async def _conn(self, r, w):
        try:
            first = await r.read(65536)
        except (OSError, ssl.SSLError):
            first = b""
        if not first:
            w.close()
            return
        if first.startswith(b"GET /offline"):
            self.offline_seen.set()
            if self.hold_offline:
                await self.released.wait()
        ur, uw = await asyncio.open_connection("127.0.0.1", self.up)
        uw.write(first)
        await asyncio.gather(self._pump(r, uw, w), self._pump(ur, w, uw))

    def release(self):
        self.loop.call_soon_threadsafe(self.released.set)

    def close(self):
        async def stop():
            self.server.close()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(IO_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(IO_TIMEOUT)
        self.loop.close()


class ClientTlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(CLI, os.X_OK):
            sys.exit("test_client_tls: IMCHAT_CLI=%r is not an executable "
                     "(run through `meson test`)" % CLI)
        cls.pki = mkdtemp("pki")
        make_pki(cls.pki)
        cls.ca = os.path.join(cls.pki, "ca.pem")
        cls.srv = imctest.Server().start()
        cls.proxy = TlsProxy(cls.srv.port, os.path.join(cls.pki, "good.pem"),
                             os.path.join(cls.pki, "good.key"))

    @classmethod
    def tearDownClass(cls):
        cls.proxy.close()
        cls.srv.stop()

    def setUp(self):
        self.xdg = mkdtemp("xdg")
        self.tokens = {}
        self.proxy.hold_offline = False

    def token(self, user):
        if user not in self.tokens:
            self.tokens[user] = self.srv.token(user)
        return self.tokens[user]

    def args(self, user, *rest, url=None, ca=True):
        a = [CLI, "--server",
             url or "wss://127.0.0.1:%d/ws" % self.proxy.port,
             "--token", self.token(user)]
        if ca:
            a += ["--ca-file", self.ca]
        return a + list(rest)

    def env(self):
        e = dict(os.environ)
        e["XDG_DATA_HOME"] = self.xdg
        return e

    def run_cli(self, user, *rest, timeout=60, **kw):
        r = subprocess.run(self.args(user, *rest, **kw), capture_output=True,
                           text=True, timeout=timeout, env=self.env(),
                           stdin=subprocess.DEVNULL)
        self.assertIsNone(_SANITIZER_RE.search(r.stderr), r.stderr)
        return r

    # -----------------------------------------------------------------

    def test_send_listen_history_over_tls(self):
        # bob is offline: the message is stored, and bob's listen gets it
        # from the offline sync over https://.
        r = self.run_cli("alice", "send", "bob", "hi over tls")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("stored for bob", r.stdout)
        r = self.run_cli("bob", "listen", "--json", "--count", "1",
                         "--timeout", "20")
        self.assertEqual(r.returncode, 0, r.stderr)
        msgs = [json.loads(x) for x in r.stdout.splitlines()]
        self.assertEqual([(m["text"], m["from_user"], m["offline"])
                          for m in msgs], [("hi over tls", "alice", True)])
        r = self.run_cli("bob", "history", "p:alice:bob")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("alice: hi over tls", r.stdout)

        # Live, both ways over wss://: bob's push and alice's tick.
        p = subprocess.Popen(self.args("bob", "--verbose", "listen",
                                       "--count", "1"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=self.env(),
                             stdin=subprocess.DEVNULL)
        try:
            while True:  # bob is online once the CLI logs it
                line = p.stderr.readline()
                self.assertTrue(line, "bob's listen ended before online")
                if line.startswith("imchat: online"):
                    break
            r = self.run_cli("alice", "send", "bob", "live over tls")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("delivered to bob", r.stdout)
            out, err = p.communicate(timeout=IO_TIMEOUT)
        finally:
            p.kill()
            p.wait()
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(out, "alice: live over tls\n")

    def test_unknown_ca_is_refused(self):
        # No --ca-file: the system's CAs do not know the test CA.
        r = self.run_cli("carol", "send", "dave", "x", ca=False)
        self.assertEqual(r.returncode, EXIT_TLS, r.stderr)
        self.assertIn("certificate verification failed", r.stderr)
        self.assertIn("stays in the outbox", r.stderr)
        # history goes through libcurl: the same check, the same exit code.
        r = self.run_cli("carol", "history", "p:carol:dave", ca=False)
        self.assertEqual(r.returncode, EXIT_TLS, r.stderr)
        self.assertIn("certificate verification failed", r.stderr)
        # --insecure skips the check (and says so); the send goes out.
        r = self.run_cli("carol", "--insecure", "flush", ca=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("testing only", r.stderr)

    def test_name_mismatch_is_refused(self):
        other = TlsProxy(self.srv.port, os.path.join(self.pki, "other.pem"),
                         os.path.join(self.pki, "other.key"))
        try:
            url = "wss://127.0.0.1:%d/ws" % other.port
            r = self.run_cli("erin", "listen", "--timeout", "10", url=url)
            self.assertEqual(r.returncode, EXIT_TLS, r.stderr)
            self.assertIn("certificate verification failed", r.stderr)
            self.assertIn("mismatch", r.stderr)
            r = self.run_cli("erin", "history", "p:erin:fred", url=url)
            self.assertEqual(r.returncode, EXIT_TLS, r.stderr)
            self.assertIn("certificate verification failed", r.stderr)
        finally:
            other.close()

    def test_plain_server_and_bad_arguments(self):
        # wss:// to a server that does not speak TLS.
        r = self.run_cli("gina", "listen", "--timeout", "10",
                         url="wss://127.0.0.1:%d/ws" % self.srv.port)
        self.assertEqual(r.returncode, EXIT_TLS, r.stderr)
        self.assertIn("TLS handshake failed", r.stderr)
        r = subprocess.run(self.args("gina", "listen") + ["--ca-file",
                                                          "/nonexistent"],
                           capture_output=True, text=True, env=self.env())
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--ca-file", r.stderr)
        r = self.run_cli("gina", "listen",
                         url="ws://127.0.0.1:%d/ws" % self.srv.port)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("for TLS servers", r.stderr)
        r = subprocess.run([CLI, "--help"], capture_output=True, text=True)
        self.assertIn("--insecure", r.stdout)
        self.assertIn("  6  TLS failed", r.stdout)

    def test_websocket_served_while_a_page_is_fetched(self):
        # The proxy holds hank's GET /offline; meanwhile ivy's message is
        # pushed on the WebSocket and hank's listen (--count 1) must print
        # it and end without waiting for the page.
        self.proxy.hold_offline = True
        self.proxy.offline_seen.clear()
        p = subprocess.Popen(self.args("hank", "listen", "--count", "1",
                                       "--timeout", "30"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=self.env(),
                             stdin=subprocess.DEVNULL)
        try:
            # The sync starts after the Welcome: hank is online.
            self.assertTrue(self.proxy.offline_seen.wait(IO_TIMEOUT),
                            "hank's offline sync did not start")
            r = self.run_cli("ivy", "send", "hank", "while syncing")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("delivered to hank", r.stdout)
            out, err = p.communicate(timeout=IO_TIMEOUT)
        finally:
            self.proxy.release()
            p.kill()
            p.wait()
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(out, "ivy: while syncing\n")
        self.assertIsNone(_SANITIZER_RE.search(err), err)


if __name__ == "__main__":
    imctest.main()

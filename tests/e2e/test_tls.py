#!/usr/bin/python3
"""End-to-end tests of TLS on the listener of imchatd and im-gateway
(--tls-cert, --tls-key, --tls-min-version; hosts/common/tls.c): a chat
round trip over wss:// and https:// pages with Python's ssl, the imchat CLI
with --ca-file, TLS 1.2 refused by default and accepted when allowed,
plain HTTP on the TLS port, the handshake timeout covering the TLS
handshake, SIGHUP reloading the certificate (open connections keep
working, a broken file keeps the old one) and bad flags and files.
Certificates are made here with the `openssl` command.

Run: IMCHATD=build/hosts/imchatd IMCHAT_CLI=build/hosts/imchat \\
     IM_GATEWAY=build/hosts/im-gateway IMC_PROTO_DIR=proto/imchat/v1 \\
     /usr/bin/python3 tests/e2e/test_tls.py
"""

import contextlib
import json
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imctest  # noqa: E402
import test_chat  # noqa: E402  (its Client and token())
from imctest import IO_TIMEOUT, mkdtemp, welcome  # noqa: E402

CLI = os.environ.get("IMCHAT_CLI", "")
GATEWAY = os.environ.get("IM_GATEWAY", "")
HANDSHAKE_TIMEOUT = 10.0  # s: the gateway's default
# A closed port: im-gateway's backends are down in these tests; its
# listener, TLS and /healthz do not need them.
DEAD = "127.0.0.1:1"


def openssl(*args, cwd):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd,
                       capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise AssertionError("openssl %s failed:\n%s" % (args[0], r.stderr))


def make_certs(d):
    """Two self-signed certificates for 127.0.0.1 with their keys: a.pem
    (CN imchat-tls-a, serial 0A) and b.pem (imchat-tls-b, 0B); enc.key is
    a's key encrypted, junk.pem is not PEM at all."""
    for name, serial in (("a", "0x0A"), ("b", "0x0B")):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", name + ".key", "-out", name + ".pem",
                "-days", "2", "-subj", "/CN=imchat-tls-" + name,
                "-set_serial", serial,
                "-addext", "subjectAltName=IP:127.0.0.1", cwd=d)
    openssl("pkey", "-in", "a.key", "-aes256", "-passout", "pass:secret",
            "-out", "enc.key", cwd=d)
    with open(os.path.join(d, "junk.pem"), "w") as f:
        f.write("not a certificate\n")


def client_ctx(pki, max_version=None):
    """A client context that trusts both test certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(pki, "a.pem"))
    ctx.load_verify_locations(os.path.join(pki, "b.pem"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def tls_peer(port, ctx):
    """Connects with ctx; (TLS version, certificate serial, subject CN)."""
    with socket.create_connection(("127.0.0.1", port),
                                  timeout=IO_TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            cert = s.getpeercert()
            cn = [v for rdn in cert["subject"] for k, v in rdn
                  if k == "commonName"]
            return s.version(), cert["serialNumber"], cn[0]


def client_hello(ctx):
    """The bytes of a real ClientHello, from a handshake that goes no
    further."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = out.read()
    assert len(hello) > 100, hello
    return hello


def wait_closed(socks, timeout):
    """Waits until the server closes each socket (EOF or reset); the
    seconds each took, in order."""
    start = time.monotonic()
    took = [None] * len(socks)
    while None in took:
        left = start + timeout - time.monotonic()
        if left <= 0:
            raise AssertionError("still open after %.0f s: %r"
                                 % (timeout, took))
        open_ = [s for s, t in zip(socks, took) if t is None]
        ready, _, _ = select.select(open_, [], [], left)
        for s in ready:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                took[socks.index(s)] = time.monotonic() - start
    return took


class TlsServer(imctest.Server):
    """imchatd with TLS on its listener, reached with ctx."""

    def __init__(self, pki, *flags, ctx=None, **kw):
        super().__init__(*flags, **kw)
        self.tls = ctx or client_ctx(pki)


class TlsGateway(TlsServer):
    """im-gateway with TLS; its backends (etcd, Kafka, MariaDB, the
    routers) are a closed port."""

    program = GATEWAY
    listen_re = re.compile(r"WebSocket and HTTP over TLS on "
                           r"127\.0\.0\.1:(\d+)")

    def config_args(self):
        return ["--jwt-secret", self.secret, "--grpc-listen", "127.0.0.1:0",
                "--grpc-advertise", "127.0.0.1:9", "--router", DEAD,
                "--etcd", "http://" + DEAD, "--kafka", DEAD,
                "--mysql", DEAD + "/imchat"]


def run_exit(args, timeout=30):
    """Runs a program that must exit by itself; (status, stderr)."""
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stderr


class TlsBase(imctest.AsyncTestCase):
    """Each test starts its servers (self.server()), on the certificate
    and key files self.cert and self.key, which start as a's."""

    @classmethod
    def setUpClass(cls):
        cls.pki = mkdtemp("pki")
        make_certs(cls.pki)

    async def asyncSetUp(self):
        await super().asyncSetUp()
        self.stack = contextlib.AsyncExitStack()
        self.servers = []
        # The listener's files, replaced by the reload tests.
        self.files = mkdtemp("tls")
        self.cert = os.path.join(self.files, "cert.pem")
        self.key = os.path.join(self.files, "key.pem")
        self.use("a")

    async def asyncTearDown(self):
        try:
            await self.stack.aclose()
        finally:
            for s in self.servers:
                s.check_alive("after " + self.id())
            for s in self.servers:
                s.stop()

    def use(self, name, key=None):
        """Puts certificate name (and key, default its own) in place."""
        shutil.copy(os.path.join(self.pki, name + ".pem"), self.cert)
        shutil.copy(os.path.join(self.pki, (key or name) + ".key"), self.key)

    def pki_file(self, name):
        return os.path.join(self.pki, name)

    def server(self, *flags, cls=TlsServer, files=True, **kw):
        args = (["--tls-cert", self.cert, "--tls-key", self.key]
                if files else []) + list(flags)
        s = cls(self.pki, *args, name="%s (%s)" % (
            "im-gateway" if cls is TlsGateway else "imchatd",
            self.id().rsplit(".", 1)[-1]), **kw).start()
        self.servers.append(s)
        return s

    async def client(self, srv, user):
        ws = await self.stack.enter_async_context(
            srv.connect(token=test_chat.token(user)))
        w = (await welcome(ws)).welcome
        self.assertEqual(w.user_id, user)
        return test_chat.Client(srv, user, "default", ws, w)

    async def round_trip(self, a, b, text):
        """a sends text to b: SendAck, Deliver, ACK, DeliveryStatus."""
        ack = await a.sent(to=b.user, body=text.encode())
        m = await b.deliver(ack.msg_id)
        self.assertEqual((m.from_user, m.body), (a.user, text.encode()))
        await b.ack(m.msg_id)
        st = await a.status(ack.msg_id)
        self.assertEqual(st.msg_id, ack.msg_id)

    def imchatd_exit(self, *flags):
        d = mkdtemp("data")
        return run_exit([imctest.IMCHATD, "--listen", "127.0.0.1:0",
                         "--data-dir", d, "--jwt-secret", imctest.SECRET]
                        + list(flags))

    def check_handshake_timeout(self, srv, timeout):
        """A client that sends nothing, and one that stops in the middle of
        its ClientHello, are both closed after the handshake timeout (srv's
        --handshake-timeout)."""
        hello = client_hello(srv.tls)
        silent = socket.create_connection(("127.0.0.1", srv.port))
        stalled = socket.create_connection(("127.0.0.1", srv.port))
        try:
            stalled.sendall(hello[:len(hello) // 2])
            took = wait_closed([silent, stalled], timeout + 10)
        finally:
            silent.close()
            stalled.close()
        for t in took:
            self.assertGreater(t, timeout - 1, took)
            self.assertLess(t, timeout + 2.5, took)
        self.assertEqual(imctest.http_get(srv.port, "/healthz",
                                          tls=srv.tls).status, 200)


class TlsTest(TlsBase):
    """imchatd."""

    async def test_wss_chat_and_https(self):
        srv = self.server()
        self.assertEqual(tls_peer(srv.port, srv.tls),
                         ("TLSv1.3", "0A", "imchat-tls-a"))
        alice = await self.client(srv, "alice")
        bob = await self.client(srv, "bob")
        await self.round_trip(alice, bob, "hello over wss")
        await self.round_trip(bob, alice, "and back")
        # A frame larger than one TLS record (16 KiB) both ways.
        big = "x" * 40000
        await self.round_trip(alice, bob, big)
        r = imctest.http_get(srv.port, "/healthz", tls=srv.tls)
        self.assertEqual(r.status, 200, r)
        # The history over https, with the token.
        r = imctest.http_get(
            srv.port, "/v1/conversations/p:alice:bob/messages",
            headers={"Authorization": "Bearer " + test_chat.token("alice")},
            tls=srv.tls)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.json()["messages"]), 3, r)
        srv.wait_log(r"connect: wss://127\.0\.0\.1:%d/ws" % srv.port)

    async def test_slow_reader(self):
        # bob's client stops reading after one message and his socket
        # takes little at a time: alice sends until the server's TLS
        # writes block (WANT_WRITE, retried on EPOLLOUT), then bob reads:
        # every byte arrives, in order.
        srv = self.server("--log-level", "debug")
        alice = await self.client(srv, "alice")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        ws = await self.stack.enter_async_context(srv.connect(
            token=test_chat.token("bob"), sock=sock,
            server_hostname="127.0.0.1", max_queue=1, read_limit=4096))
        bob = test_chat.Client(srv, "bob", "default", ws,
                               (await welcome(ws)).welcome)
        mark = srv.log_mark()
        blocked = re.compile(r"socket buffer full; waiting for EPOLLOUT")
        bodies = []
        while not any(blocked.search(line) for line in srv.lines(mark)):
            self.assertLess(len(bodies), 150, "the writes never blocked")
            bodies.append(os.urandom(60000))
            await alice.sent(to="bob", body=bodies[-1], ctype=None)
        got = [(await bob.deliver()).body for _ in bodies]
        self.assertEqual(got, bodies)
        await self.round_trip(alice, bob, "still fine")

    async def test_tls12_refused_by_default_and_opt_in(self):
        tls12 = client_ctx(self.pki, max_version=ssl.TLSVersion.TLSv1_2)
        srv = self.server()
        with self.assertRaises(ssl.SSLError) as e:
            tls_peer(srv.port, tls12)
        self.assertIn("VERSION", str(e.exception).upper())
        self.assertEqual(imctest.http_get(srv.port, "/healthz",
                                          tls=srv.tls).status, 200)
        # Opt-in: the files from the INI file, the version from the flag.
        ini = os.path.join(self.files, "imchatd.ini")
        with open(ini, "w") as f:
            f.write("[imchatd]\ntls-cert = %s\ntls-key = %s\n"
                    % (self.cert, self.key))
        srv12 = self.server("--config", ini, "--tls-min-version", "1.2",
                            files=False, ctx=tls12)
        srv12.wait_log(r"TLS 1\.2 or later on --listen")
        self.assertEqual(tls_peer(srv12.port, tls12)[0], "TLSv1.2")
        self.assertEqual(tls_peer(srv12.port, client_ctx(self.pki))[0],
                         "TLSv1.3")
        alice = await self.client(srv12, "alice")
        bob = await self.client(srv12, "bob")
        await self.round_trip(alice, bob, "over TLS 1.2")

    async def test_plain_http_is_refused(self):
        srv = self.server()
        with socket.create_connection(("127.0.0.1", srv.port),
                                      timeout=IO_TIMEOUT) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            start = time.monotonic()
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
            took = time.monotonic() - start
        self.assertNotIn(b"HTTP/", data)
        self.assertLess(took, HANDSHAKE_TIMEOUT / 2,
                        "closed only by the handshake timeout")
        srv.check_alive()
        self.assertEqual(imctest.http_get(srv.port, "/healthz",
                                          tls=srv.tls).status, 200)

    async def test_handshake_timeout(self):
        # The default (10 s) is held to by test_attack.py's slowloris.
        self.check_handshake_timeout(
            self.server("--handshake-timeout", "3"), 3)

    async def test_sighup_reloads_the_certificate(self):
        srv = self.server()
        alice = await self.client(srv, "alice")
        self.use("b")
        srv.sighup(r"TLS: reloaded: subject CN = imchat-tls-b, serial 0B")
        self.assertEqual(tls_peer(srv.port, srv.tls)[1:],
                         ("0B", "imchat-tls-b"))
        # alice's connection began under a and goes on.
        bob = await self.client(srv, "bob")
        await self.round_trip(alice, bob, "across the reload")
        await self.round_trip(bob, alice, "and back")

        # Broken files: logged, b stays.
        with open(self.cert, "w") as f:
            f.write("garbage\n")
        srv.sighup(r"TLS: reload failed: --tls-cert: cannot load .*; the "
                   r"certificate in use stays")
        self.use("b", key="a")
        srv.sighup(r"TLS: reload failed: --tls-key: .* does not match the "
                   r"certificate .*; the certificate in use stays")
        os.unlink(self.cert)
        srv.sighup(r"TLS: reload failed: --tls-cert: cannot read .*No such "
                   r"file")
        self.assertEqual(tls_peer(srv.port, srv.tls)[1:],
                         ("0B", "imchat-tls-b"))
        await self.round_trip(alice, bob, "after failed reloads")
        # Good files again.
        self.use("a")
        srv.sighup(r"TLS: reloaded: subject CN = imchat-tls-a")
        self.assertEqual(tls_peer(srv.port, srv.tls)[1], "0A")

    async def test_cli_over_native_tls(self):
        if not os.access(CLI, os.X_OK):
            self.fail("IMCHAT_CLI=%r is not an executable" % CLI)
        srv = self.server()
        xdg = mkdtemp("xdg")
        env = dict(os.environ, XDG_DATA_HOME=xdg)

        def cli(user, *rest):
            tok = srv.token(user)
            return subprocess.run(
                [CLI, "--server", "wss://127.0.0.1:%d/ws" % srv.port,
                 "--token", tok, "--ca-file", self.pki_file("a.pem")]
                + list(rest), capture_output=True, text=True, timeout=60,
                env=env, stdin=subprocess.DEVNULL)

        r = cli("carol", "send", "dave", "hi over native tls")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("stored for dave", r.stdout)
        # dave's listen gets it from the offline page (https, libcurl).
        r = cli("dave", "listen", "--json", "--count", "1", "--timeout", "20")
        self.assertEqual(r.returncode, 0, r.stderr)
        msgs = [json.loads(x) for x in r.stdout.splitlines()]
        self.assertEqual([(m["text"], m["from_user"]) for m in msgs],
                         [("hi over native tls", "carol")])

    async def test_bad_flags_and_files(self):
        cert, key = self.pki_file("a.pem"), self.pki_file("a.key")
        cases = [
            (["--tls-cert", cert], "--tls-cert needs --tls-key"),
            (["--tls-key", key], "--tls-key needs --tls-cert"),
            (["--tls-min-version", "1.2"],
             "--tls-min-version needs --tls-cert"),
            (["--tls-cert", cert, "--tls-key", key, "--tls-min-version",
              "1.1"], "--tls-min-version: '1.1' is not 1.2 or 1.3"),
            (["--tls-cert", "/nonexistent/c.pem", "--tls-key", key],
             "--tls-cert: cannot read '/nonexistent/c.pem': No such file"),
            (["--tls-cert", cert, "--tls-key", "/nonexistent/k.pem"],
             "--tls-key: cannot read '/nonexistent/k.pem': No such file"),
            (["--tls-cert", self.pki_file("junk.pem"), "--tls-key", key],
             "--tls-cert: cannot load"),
            (["--tls-cert", cert, "--tls-key", self.pki_file("b.key")],
             "does not match the certificate of --tls-cert"),
            (["--tls-cert", cert, "--tls-key", self.pki_file("enc.key")],
             "not encrypted"),
            (["--handshake-timeout", "0"],
             "--handshake-timeout: '0' is not a number of seconds"),
        ]
        for flags, msg in cases:
            with self.subTest(flags=flags):
                rc, err = self.imchatd_exit(*flags)
                self.assertEqual(rc, 2, err)
                self.assertIn(msg, err)
        # The INI file: the same rule.
        ini = os.path.join(self.files, "half.ini")
        with open(ini, "w") as f:
            f.write("[imchatd]\ntls-cert = %s\n" % cert)
        rc, err = self.imchatd_exit("--config", ini)
        self.assertEqual(rc, 2, err)
        self.assertIn("--tls-cert needs --tls-key", err)
        help_ = subprocess.run([imctest.IMCHATD, "--help"],
                               capture_output=True, text=True).stdout
        for flag in ("--tls-cert", "--tls-key", "--tls-min-version",
                     "--handshake-timeout"):
            self.assertIn(flag, help_)


class TlsGatewayTest(TlsBase):
    """The same listener in im-gateway (hosts/cluster/gateway.c)."""

    async def asyncSetUp(self):
        await super().asyncSetUp()
        if not os.access(GATEWAY, os.X_OK):
            self.skipTest("im-gateway not built (IM_GATEWAY=%r)" % GATEWAY)
        os.environ["IMCHAT_MYSQL_USER"] = "imchat"

    def gateway(self, *flags):
        return self.server(*flags, cls=TlsGateway)

    async def test_gateway_https_and_handshake_timeout(self):
        gw = self.gateway("--handshake-timeout", "3")
        self.assertEqual(tls_peer(gw.port, gw.tls),
                         ("TLSv1.3", "0A", "imchat-tls-a"))
        r = imctest.http_get(gw.port, "/metrics", tls=gw.tls)
        self.assertEqual(r.status, 200, r)
        self.check_handshake_timeout(gw, 3)

    async def test_gateway_sighup(self):
        gw = self.gateway()
        self.use("b")
        gw.sighup(r"TLS: reloaded: subject CN = imchat-tls-b, serial 0B")
        self.assertEqual(tls_peer(gw.port, gw.tls)[1], "0B")
        with open(self.cert, "w") as f:
            f.write("garbage\n")
        gw.sighup(r"TLS: reload failed: --tls-cert: cannot load")
        self.assertEqual(tls_peer(gw.port, gw.tls)[1], "0B")

    async def test_gateway_bad_files(self):
        base = [GATEWAY, "--listen", "127.0.0.1:0", "--jwt-secret", "s",
                "--grpc-listen", "127.0.0.1:0", "--grpc-advertise",
                "127.0.0.1:9"]
        cert = self.pki_file("a.pem")
        rc, err = run_exit(base + ["--tls-cert", cert])
        self.assertEqual(rc, 2, err)
        self.assertIn("--tls-cert needs --tls-key", err)
        rc, err = run_exit(base + ["--tls-cert", cert, "--tls-key",
                                   self.pki_file("b.key")])
        self.assertEqual(rc, 2, err)
        self.assertIn("does not match the certificate", err)
        help_ = subprocess.run([GATEWAY, "--help"], capture_output=True,
                               text=True).stdout
        self.assertIn("--tls-cert", help_)
        # im-service takes it for its --http-listen, checked the same way.
        rc, err = run_exit([os.path.join(os.path.dirname(GATEWAY),
                                         "im-service"), "--tls-cert", cert])
        self.assertEqual(rc, 2, err)
        self.assertIn("--tls-cert needs --tls-key", err)


if __name__ == "__main__":
    imctest.main()

#!/usr/bin/python3
"""End-to-end tests of imchatd --jwks-url: RS256 and ES256 tokens verified
with the keys of a JWK Set that a real HTTP server (Python's http.server,
and over TLS with a CA made here) serves on loopback. The keys are made and
the tokens signed with the `openssl` command; the JWKs are written from
openssl's output.

Covered: tokens of an RSA and an EC key accepted, a kid-less token only
when the set holds one key of its alg, a tampered or foreign token refused
(401); a lookup waiting for the fetch in flight; an unknown kid fetching the
set again once, the rotated key then accepted, and a flood of unknown kids
fetching nothing more (the JWKS server counts the requests); the JWKS
server down at start (not ready, tokens refused, then ready once it is up);
https with --jwks-ca-file, and refused without it; --jwks-url beside
--jwt-secret; the INI key; bad combinations of flags.

Run: IMCHATD=build/hosts/imchatd IMC_PROTO_DIR=proto/imchat/v1 \
     /usr/bin/python3 tests/e2e/test_jwks.py [-k PATTERN]
"""

import base64
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imctest  # noqa: E402
from imctest import (IO_TIMEOUT, b64url, http_get, http_raw, mkdtemp,  # noqa
                     sign_hs256, upgrade_request, welcome)


# ---------------------------------------------------------------------------
# Keys, JWKs and tokens with the openssl command
# ---------------------------------------------------------------------------

def openssl(*args, data=None, cwd=None):
    r = subprocess.run(["openssl"] + list(args), input=data, cwd=cwd,
                       capture_output=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError("openssl %s failed:\n%s"
                             % (" ".join(args), r.stderr.decode()))
    return r.stdout


class Key:
    """A private key in a PEM file and its public JWK."""

    def __init__(self, d, name, kind, kid):
        self.path = os.path.join(d, name + ".pem")
        self.kid = kid
        self.kind = kind
        if kind == "RSA":
            openssl("genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:2048", "-out", self.path)
            mod = openssl("rsa", "-in", self.path, "-noout", "-modulus")
            n = bytes.fromhex(mod.decode().strip().split("=", 1)[1])
            text = openssl("rsa", "-in", self.path, "-noout", "-text")
            exp = int(text.decode().split("publicExponent: ")[1].split()[0])
            e = exp.to_bytes((exp.bit_length() + 7) // 8, "big")
            self.jwk = {"kty": "RSA", "kid": kid, "use": "sig",
                        "alg": "RS256", "n": b64url(n), "e": b64url(e)}
            self.alg = "RS256"
        else:
            openssl("genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-out", self.path)
            der = openssl("pkey", "-in", self.path, "-pubout", "-outform",
                          "DER")
            # A P-256 SubjectPublicKeyInfo ends with the point 04 || x || y.
            assert len(der) == 91 and der[-65] == 4, der.hex()
            self.jwk = {"kty": "EC", "crv": "P-256", "kid": kid,
                        "x": b64url(der[-64:-32]), "y": b64url(der[-32:])}
            self.alg = "ES256"

    def sign(self, claims, kid=True, header=None):
        """A compact JWS of claims; kid False leaves the kid out, a string
        names another one."""
        if header is None:
            header = {"alg": self.alg, "typ": "JWT"}
            if kid is not False:
                header["kid"] = self.kid if kid is True else kid
        signing_input = (b64url(json.dumps(header)) + "." +
                         b64url(json.dumps(claims)))
        sig = openssl("dgst", "-sha256", "-sign", self.path,
                      data=signing_input.encode())
        if self.kind == "EC":
            sig = der_to_raw(sig)
        return signing_input + "." + b64url(sig)


def der_to_raw(der):
    """An ECDSA-Sig-Value (DER) as the r || s of JWS (RFC 7518 3.4)."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 3
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        out += int.from_bytes(der[i + 2:i + 2 + n], "big").to_bytes(32, "big")
        i += 2 + n
    return out


def claims(sub, ttl=600):
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + ttl}


_keys = {}


def keys():
    """r1, r2 (RSA) and e1 (EC), made once."""
    if not _keys:
        d = mkdtemp("jwks-keys")
        _keys["r1"] = Key(d, "r1", "RSA", "r1")
        _keys["r2"] = Key(d, "r2", "RSA", "r2")
        _keys["e1"] = Key(d, "e1", "EC", "e1")
    return _keys


# ---------------------------------------------------------------------------
# The JWKS server
# ---------------------------------------------------------------------------

class JwksServer:
    """Serves self.doc at /jwks.json on 127.0.0.1 and counts the GETs.
    With hold set (a threading.Event), each request waits for it first;
    seen is set when a request arrives. With broken set (status, body),
    that is the answer instead. cache_control, if set, is sent as the
    Cache-Control header. times holds the monotonic time of each GET."""

    def __init__(self, port=0, cert=None):
        self.doc = {"keys": []}
        self.hold = None
        self.broken = None
        self.cache_control = None
        self.times = []
        self.seen = threading.Event()
        self._count = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                with outer._lock:
                    outer._count += 1
                    outer.times.append(time.monotonic())
                    status, doc = outer.broken or (
                        200, json.dumps(outer.doc).encode())
                outer.seen.set()
                if outer.hold is not None:
                    outer.hold.wait(IO_TIMEOUT)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(doc)))
                if outer.cache_control:
                    self.send_header("Cache-Control", outer.cache_control)
                self.end_headers()
                self.wfile.write(doc)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                                     Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*cert)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket,
                                                server_side=True)
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "%s://127.0.0.1:%d/jwks.json" % (self.scheme, self.port)

    def requests(self):
        with self._lock:
            return self._count

    def set_keys(self, *ks):
        with self._lock:
            self.doc = {"keys": [k.jwk for k in ks]}

    def stop(self):
        if self.hold is not None:
            self.hold.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port():
    """A loopback port nothing listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pki(d):
    """A CA (ca.pem) and a certificate for 127.0.0.1 it signed."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=imchat jwks test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    with open(os.path.join(d, "srv.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    openssl("req", *ec, "-keyout", "srv.key", "-out", "srv.csr",
            "-subj", "/CN=jwks", cwd=d)
    openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey",
            "ca.key", "-set_serial", "2", "-days", "2", "-extfile",
            "srv.ext", "-out", "srv.pem", cwd=d)
    return (os.path.join(d, "ca.pem"),
            (os.path.join(d, "srv.pem"), os.path.join(d, "srv.key")))


# ---------------------------------------------------------------------------
# Helpers against imchatd
# ---------------------------------------------------------------------------

def wait_ready(srv, timeout=IO_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        r = http_get(srv.port, "/readyz")
        if r.status == 200:
            return
        srv.check_alive("while waiting for /readyz")
        if time.monotonic() > deadline:
            raise AssertionError("/readyz still %d after %.0f s: %r\n%s"
                                 % (r.status, timeout, r.body,
                                    srv.stderr_text()))
        time.sleep(0.05)


def metric(srv, name):
    r = http_get(srv.port, "/metrics")
    assert r.status == 200, r
    for line in r.body.decode().splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError("no %s in /metrics:\n%s" % (name, r.body.decode()))


def upgrade_status(srv, token):
    return http_raw(srv.port, upgrade_request(srv.port, token=token)).status


class JwksTest(imctest.AsyncTestCase):
    async def accepted(self, srv, token, user):
        async with srv.connect(token=token) as ws:
            w = (await welcome(ws)).welcome
            self.assertEqual(w.user_id, user)

    def refused(self, srv, token):
        self.assertEqual(upgrade_status(srv, token), 401)


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

class TestKeys(JwksTest):
    """One RSA and one EC key; imchatd reads the URL from its INI file and
    has no HS256 secret."""

    @classmethod
    def setUpClass(cls):
        k = keys()
        cls.js = JwksServer()
        cls.js.set_keys(k["r1"], k["e1"])
        ini = os.path.join(mkdtemp("jwks-ini"), "imchatd.ini")
        with open(ini, "w") as f:
            f.write("[imchatd]\njwks_url = %s\n" % cls.js.url)
        cls.srv = imctest.Server("--config", ini, secret=None,
                                 name="imchatd (jwks)").start()
        wait_ready(cls.srv)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.js.stop()

    def setUp(self):
        self.srv.check_alive("before the test")

    async def test_rsa_and_ec_tokens_accepted(self):
        k = keys()
        await self.accepted(self.srv, k["r1"].sign(claims("rsa-user")),
                            "rsa-user")
        await self.accepted(self.srv, k["e1"].sign(claims("ec-user")),
                            "ec-user")
        # The one key of each alg serves tokens without kid.
        await self.accepted(self.srv, k["r1"].sign(claims("r"), kid=False),
                            "r")
        await self.accepted(self.srv, k["e1"].sign(claims("e"), kid=False),
                            "e")
        self.assertEqual(metric(self.srv, "imchat_jwks_keys"), 2)

    def test_tampered_and_foreign_tokens_refused(self):
        k = keys()
        good = k["r1"].sign(claims("mallory"))
        h, p, s = good.split(".")
        forged = b64url(json.dumps(claims("admin")))
        self.refused(self.srv, h + "." + forged + "." + s)
        sig = bytearray(base64.urlsafe_b64decode(s + "=="))
        sig[10] ^= 1
        self.refused(self.srv, h + "." + p + "." + b64url(bytes(sig)))
        # Signed by a key outside the set under a kid of the set; an
        # ES256 token under the RSA key's kid; expired.
        self.refused(self.srv, k["r2"].sign(claims("x"), kid="r1"))
        self.refused(self.srv, k["e1"].sign(claims("x"), kid="r1"))
        self.refused(self.srv, k["r1"].sign(claims("x", ttl=-120)))
        # No HS256 secret here: not even one keyed with the JWK text.
        self.refused(self.srv, sign_hs256(claims("x")))
        self.refused(self.srv, sign_hs256(
            claims("x"), secret=json.dumps(k["r1"].jwk),
            header={"alg": "HS256", "kid": "r1"}))
        self.refused(self.srv, k["r1"].sign(
            claims("x"), header={"alg": "none", "kid": "r1"}))
        self.srv.check_alive()


class TestRotation(JwksTest):
    """An unknown kid fetches the set again, at most once per 30 s."""

    @classmethod
    def setUpClass(cls):
        k = keys()
        cls.js = JwksServer()
        cls.js.set_keys(k["r1"], k["e1"])
        cls.srv = imctest.Server("--jwks-url", cls.js.url, secret=None,
                                 name="imchatd (jwks rotation)").start()
        wait_ready(cls.srv)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.js.stop()

    async def test_unknown_kid_refetches_once(self):
        k = keys()
        self.assertEqual(self.js.requests(), 1)
        # The issuer rotates: r2 joins the set. The first token of r2
        # fetches it and is accepted.
        self.js.set_keys(k["r1"], k["e1"], k["r2"])
        mark = self.srv.log_mark()
        await self.accepted(self.srv, k["r2"].sign(claims("rot")), "rot")
        self.assertEqual(self.js.requests(), 2)
        self.srv.wait_log(r"3 key\(s\) from .*r1 RS256, e1 ES256, r2 RS256",
                          after=mark)
        await self.accepted(self.srv, k["r1"].sign(claims("old")), "old")

        # A flood of unknown kids within 30 s fetches nothing more.
        for i in range(30):
            self.refused(self.srv, k["r2"].sign(claims("f"), kid="k-%d" % i))
        # Two RSA keys now: a token without kid matches neither.
        self.refused(self.srv, k["r2"].sign(claims("f"), kid=False))
        self.assertEqual(self.js.requests(), 2)
        self.assertEqual(metric(self.srv, "imchat_jwks_kid_refetches_total"),
                         1)
        self.assertEqual(metric(self.srv, "imchat_jwks_keys"), 3)
        # The keys known still work meanwhile.
        await self.accepted(self.srv, k["e1"].sign(claims("still")), "still")
        self.assertEqual(self.js.requests(), 2)


class TestFetchFailure(JwksTest):
    """A fetch that fails keeps the set in use."""

    async def test_failed_fetch_keeps_keys(self):
        k = keys()
        js = JwksServer()
        js.set_keys(k["r1"])
        srv = imctest.Server("--jwks-url", js.url, secret=None,
                             name="imchatd (jwks failing)")
        try:
            srv.start()
            wait_ready(srv)
            # The issuer answers nonsense; an unknown kid fetches it.
            js.broken = (200, b'{"keys":"none"}')
            mark = srv.log_mark()
            self.refused(srv, k["r2"].sign(claims("new")))
            # (Retries of the failed fetch follow 1, 2, 4, ... s later.)
            self.assertGreaterEqual(js.requests(), 2)
            srv.wait_log(r"fetching .* failed: not a JWK Set.*the 1 key\(s\) "
                         r"in use stay", after=mark)
            await self.accepted(srv, k["r1"].sign(claims("kept")), "kept")
            r = http_get(srv.port, "/readyz")
            self.assertEqual(r.status, 200, r)
            self.assertGreaterEqual(
                metric(srv, "imchat_jwks_fetches_total{result=\"failed\"}"), 1)
            srv.stop()
        finally:
            srv.kill()
            js.stop()


class TestRefresh(JwksTest):
    """The set is fetched again when the answer's max-age runs out (here
    31 s, instead of the 10 minutes without it)."""

    async def test_max_age_refresh(self):
        k = keys()
        js = JwksServer()
        js.set_keys(k["r1"])
        js.cache_control = "public, max-age=31, must-revalidate"
        srv = imctest.Server("--jwks-url", js.url, secret=None,
                             name="imchatd (jwks max-age)")
        try:
            srv.start()
            wait_ready(srv)
            js.set_keys(k["r1"], k["r2"])
            mark = srv.log_mark()
            srv.wait_log(r"2 key\(s\) from ", after=mark, timeout=60)
            self.assertEqual(js.requests(), 2)
            gap = js.times[1] - js.times[0]
            self.assertGreaterEqual(gap, 30.5)
            self.assertLess(gap, 50)
            # r2 came with the refresh, not with a kid refetch.
            self.assertEqual(
                metric(srv, "imchat_jwks_kid_refetches_total"), 0)
            await self.accepted(srv, k["r2"].sign(claims("fresh")), "fresh")
            srv.stop()
        finally:
            srv.kill()
            js.stop()


class TestWaitForFetch(JwksTest):
    """A token that arrives while the first fetch is in flight waits for
    it instead of being refused."""

    def test_lookup_waits_for_fetch(self):
        k = keys()
        js = JwksServer()
        js.set_keys(k["r1"])
        js.hold = threading.Event()
        srv = imctest.Server("--jwks-url", js.url, secret=None,
                             name="imchatd (jwks held)")
        try:
            srv.start()
            self.assertTrue(js.seen.wait(IO_TIMEOUT), "no fetch arrived")
            r = http_get(srv.port, "/readyz")
            self.assertEqual(r.status, 503, r)
            self.assertEqual(r.json().get("jwks"), "no key set", r)
            with socket.create_connection(("127.0.0.1", srv.port),
                                          timeout=IO_TIMEOUT) as s:
                s.sendall(upgrade_request(
                    srv.port, token=k["r1"].sign(claims("patient"))).encode())
                # No answer while the set is on its way...
                s.settimeout(0.5)
                with self.assertRaises(socket.timeout):
                    s.recv(1)
                # ... and the upgrade once it is there.
                s.settimeout(IO_TIMEOUT)
                js.hold.set()
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = s.recv(4096)
                    self.assertTrue(chunk, "closed after %r" % head)
                    head += chunk
                self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
            self.assertEqual(js.requests(), 1)
            wait_ready(srv)
            srv.stop()
        finally:
            srv.kill()
            js.stop()


class TestServerDown(JwksTest):
    """The JWKS server is down at start: imchatd runs, is not ready and
    refuses tokens (no key yet), retries with a growing delay, and is ready
    and accepts them once the server is up."""

    async def test_down_at_start(self):
        k = keys()
        port = free_port()
        url = "http://127.0.0.1:%d/jwks.json" % port
        srv = imctest.Server("--jwks-url", url, secret=None,
                             name="imchatd (jwks down)")
        js = None
        try:
            srv.start()
            srv.wait_log(r"--jwks-url: fetching .* failed: .*no key yet")
            r = http_get(srv.port, "/readyz")
            self.assertEqual(r.status, 503, r)
            self.assertEqual(r.json().get("jwks"), "no key set", r)
            self.refused(srv, k["r1"].sign(claims("early")))
            self.assertEqual(metric(srv, "imchat_jwks_keys"), 0)
            self.assertGreaterEqual(
                metric(srv, "imchat_jwks_fetches_total{result=\"failed\"}"),
                1)

            js = JwksServer(port=port)
            js.set_keys(k["r1"])
            # Retries come 1, 2, 4, ... s apart (at most 30 s).
            wait_ready(srv, timeout=30)
            await self.accepted(srv, k["r1"].sign(claims("late")), "late")
            srv.stop()
        finally:
            srv.kill()
            if js is not None:
                js.stop()


class TestHttps(JwksTest):
    """https: the certificate must chain to --jwks-ca-file (the system's
    CAs do not know this one). Here --jwt-secret is configured too: HS256
    tokens are verified with it, RS256/ES256 ones with the set."""

    @classmethod
    def setUpClass(cls):
        cls.ca, cert = make_pki(mkdtemp("jwks-pki"))
        cls.js = JwksServer(cert=cert)
        k = keys()
        cls.js.set_keys(k["r1"], k["e1"])

    @classmethod
    def tearDownClass(cls):
        cls.js.stop()

    async def test_ca_file_and_secret(self):
        k = keys()
        srv = imctest.Server("--jwks-url", self.js.url, "--jwks-ca-file",
                             self.ca, name="imchatd (jwks https)")
        try:
            srv.start()
            wait_ready(srv)
            await self.accepted(srv, k["e1"].sign(claims("tls")), "tls")
            await self.accepted(srv, sign_hs256(claims("hs")), "hs")
            await self.accepted(srv, srv.token("minted"), "minted")
            srv.stop()
        finally:
            srv.kill()

    def test_unknown_ca_refused(self):
        k = keys()
        srv = imctest.Server("--jwks-url", self.js.url, secret=None,
                             name="imchatd (jwks https, no CA)")
        try:
            srv.start()
            srv.wait_log(r"--jwks-url: fetching https://.* failed: .*"
                         r"(certificate|SSL)")
            r = http_get(srv.port, "/readyz")
            self.assertEqual(r.status, 503, r)
            self.refused(srv, k["r1"].sign(claims("x")))
            srv.stop()
        finally:
            srv.kill()


class TestFlags(JwksTest):
    def run_imchatd(self, *args):
        r = subprocess.run([imctest.IMCHATD, "--listen", "127.0.0.1:0",
                            "--data-dir", mkdtemp("jwks-flags")] + list(args),
                           capture_output=True, text=True, timeout=IO_TIMEOUT,
                           stdin=subprocess.DEVNULL)
        return r.returncode, r.stderr

    def test_bad_combinations(self):
        pub = os.path.join(mkdtemp("jwks-pub"), "pub.pem")
        openssl("pkey", "-in", keys()["r1"].path, "-pubout", "-out", pub)
        for args, want in [
                (["--jwks-url", "http://127.0.0.1:9/j", "--jwt-public-key",
                  pub], "--jwks-url and --jwt-public-key exclude each other"),
                (["--jwks-url", "ftp://127.0.0.1/j"],
                 "--jwks-url: 'ftp://127.0.0.1/j' is not an https://"),
                (["--jwks-url", ""], "--jwks-url: '' is not an https://"),
                (["--jwks-ca-file", "/etc/ssl/certs/ca-certificates.crt"],
                 "--jwks-ca-file needs --jwks-url"),
                (["--jwks-url", "http://[::1/j"],
                 "is not an http:// or https:// URL")]:
            with self.subTest(args=args):
                code, err = self.run_imchatd(*args)
                self.assertEqual(code, 2, err)
                self.assertIn(want, err)

    def test_help_and_token(self):
        r = subprocess.run([imctest.IMCHATD, "--help"], capture_output=True,
                           text=True, timeout=IO_TIMEOUT)
        self.assertEqual(r.returncode, 0)
        self.assertIn("--jwks-url URL", r.stdout)
        self.assertIn("--jwks-ca-file FILE", r.stdout)
        # A JWKS-only configuration has no secret to mint with.
        r = subprocess.run([imctest.IMCHATD, "token", "u", "--data-dir",
                            mkdtemp("jwks-token"), "--jwks-url",
                            "https://127.0.0.1:9/j"], capture_output=True,
                           text=True, timeout=IO_TIMEOUT)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--jwks-url", r.stderr)


if __name__ == "__main__":
    imctest.main()

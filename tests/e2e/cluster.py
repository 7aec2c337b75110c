"""The cluster harness of the end-to-end tests: im-service and im-gateway
processes on loopback, on the real backends scripts/test.sh starts
(scripts/servers.sh), each test class with its own MariaDB database, its
own node ids and user names (etcd is shared: keys of other classes are
other users' and nodes'), and its own mock Kafka cluster: consumer groups
(im-service's "worker" above all) outlive their members in the mock for a
session timeout, which would hold each class's worker back by the last
one's.

Environment (set by tests/meson.build and scripts/test.sh):
  IM_GATEWAY, IM_SERVICE   paths of the executables
  IMC_KAFKA_MOCK           tests/engines/kafka_mock
  IMC_TEST_REDIS           127.0.0.1:PORT
  IMC_TEST_MARIADB         127.0.0.1:PORT/DB, with IMCHAT_MYSQL_USER and
                           IMCHAT_MYSQL_PASSWORD (the test user may create
                           databases named imchat_*)
  IMC_TEST_ETCD            http://127.0.0.1:PORT
A missing one is a failure, not a skip.

Processes are imctest.Server objects (stderr kept and checked for sanitizer
reports, killed by pid at exit and when the runner dies); a cluster host is
ready when its /readyz answers 200.
"""

import base64
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

import imctest

IM_GATEWAY = os.environ.get("IM_GATEWAY", "")
IM_SERVICE = os.environ.get("IM_SERVICE", "")
KAFKA_MOCK = os.environ.get("IMC_KAFKA_MOCK", "")
READY_TIMEOUT = 60.0  # s: start to /readyz 200 (sanitizers, a busy machine)
ETCD_PREFIX = "/imchat/"  # the engines' default key prefix

_ENV = ("IM_GATEWAY", "IM_SERVICE", "IMC_KAFKA_MOCK", "IMC_TEST_REDIS",
        "IMC_TEST_MARIADB", "IMC_TEST_ETCD", "IMCHAT_MYSQL_USER")


def require_env():
    """Exits with a message when an executable or a backend is missing."""
    missing = [n for n in _ENV if not os.environ.get(n)]
    if missing:
        sys.exit("cluster: environment variable(s) %s not set: run "
                 "through scripts/test.sh (which starts the backends) or "
                 "set them (scripts/servers.sh)" % ", ".join(missing))
    for exe in (IM_GATEWAY, IM_SERVICE, KAFKA_MOCK):
        if not os.access(exe, os.X_OK):
            sys.exit("cluster: %s is not an executable" % exe)
    if shutil.which("mariadb") is None:
        sys.exit("cluster: the mariadb client is missing (Debian package "
                 "mariadb-client)")


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def addr(port):
    return "127.0.0.1:%d" % port


def tag():
    """A short random name part: node ids, databases and users of one test
    class never meet those of another run on the same backends."""
    return secrets.token_hex(3)


# ---------------------------------------------------------------------------
# MariaDB: one database per test class
# ---------------------------------------------------------------------------

def shared_mariadb():
    """HOST:PORT of the MariaDB server scripts/test.sh started."""
    return os.environ["IMC_TEST_MARIADB"].split("/", 1)[0]


def _mariadb(sql, server=None):
    """Runs sql on server (HOST:PORT, default the shared one)."""
    host, _, port = (server or shared_mariadb()).rpartition(":")
    env = dict(os.environ,
               MYSQL_PWD=os.environ.get("IMCHAT_MYSQL_PASSWORD", ""))
    r = subprocess.run(
        ["mariadb", "--no-defaults", "-h", host, "-P", port, "-u",
         os.environ["IMCHAT_MYSQL_USER"], "-e", sql],
        env=env, capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise AssertionError("mariadb -e %r failed (%d): %s"
                             % (sql, r.returncode, r.stderr))


def create_database(server=None):
    """A new empty database imchat_e2e_<random>; its name."""
    name = "imchat_e2e_" + secrets.token_hex(4)
    _mariadb("CREATE DATABASE `%s`" % name, server)
    return name


def drop_database(name, server=None):
    _mariadb("DROP DATABASE IF EXISTS `%s`" % name, server)


def mysql_address(db, server=None):
    return (server or shared_mariadb()) + "/" + db


# ---------------------------------------------------------------------------
# etcd: what the registry holds
# ---------------------------------------------------------------------------

def etcd_range(prefix):
    """{key: value} of etcd (IMC_TEST_ETCD) under ETCD_PREFIX + prefix."""
    key = (ETCD_PREFIX + prefix).encode()
    end = key[:-1] + bytes([key[-1] + 1])
    body = json.dumps({"key": base64.b64encode(key).decode(),
                       "range_end": base64.b64encode(end).decode()}).encode()
    req = urllib.request.Request(
        os.environ["IMC_TEST_ETCD"].split(",")[0] + "/v3/kv/range",
        data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=imctest.IO_TIMEOUT) as r:
        kvs = json.load(r).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode():
            base64.b64decode(kv.get("value", "")).decode() for kv in kvs}


def etcd_keys(prefix):
    return sorted(etcd_range(prefix))


def registered_on(user, device, node_id):
    """Whether the registry names node_id for user/device (the value of
    a connection's key is "<node>/<connection id>")."""
    v = etcd_range("users/%s/%s" % (user, device)).get(
        "%susers/%s/%s" % (ETCD_PREFIX, user, device), "")
    return v.startswith(node_id + "/")


# ---------------------------------------------------------------------------
# Mutual TLS on the gRPC links: certificates made with the openssl command
# ---------------------------------------------------------------------------

def _openssl(*args, cwd):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd,
                       capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise AssertionError("openssl %s failed:\n%s" % (args[0], r.stderr))


class GrpcPki:
    """A CA (self.ca, PEM) in directory d, and certificates it signs for
    the cluster's processes: 127.0.0.1 and localhost, for both ends of a
    link (serverAuth, clientAuth)."""

    EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-nodes"]

    def __init__(self, d):
        self.dir = d
        self.serial = 1
        self.ca = os.path.join(d, "grpc-ca.pem")
        _openssl("req", "-x509", *self.EC, "-keyout", "grpc-ca.key",
                 "-out", "grpc-ca.pem", "-days", "2",
                 "-subj", "/CN=imchat cluster test CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)

    def issue(self, name):
        """A new certificate and key for name (grpc-<name>.pem/.key, made
        again on each call, with a new serial); (cert, key, serial hex)."""
        self.serial += 1
        ext = os.path.join(self.dir, "grpc-%s.ext" % name)
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n")
        base = "grpc-" + name
        _openssl("req", *self.EC, "-keyout", base + ".key.new",
                 "-out", base + ".csr", "-subj", "/CN=" + name, cwd=self.dir)
        _openssl("x509", "-req", "-in", base + ".csr", "-CA", "grpc-ca.pem",
                 "-CAkey", "grpc-ca.key", "-set_serial", str(self.serial),
                 "-days", "2", "-extfile", ext, "-out", base + ".pem.new",
                 cwd=self.dir)
        cert, key = (os.path.join(self.dir, base + e) for e in (".pem",
                                                                  ".key"))
        # Each file whole at once: a process reloading meanwhile reads
        # the old one or the new one.
        os.replace(key + ".new", key)
        os.replace(cert + ".new", cert)
        return cert, key, "%02X" % self.serial

    def flags(self, name):
        """The --grpc-tls-* flags of a process with a new certificate."""
        cert, key, _ = self.issue(name)
        return ["--grpc-tls-cert", cert, "--grpc-tls-key", key,
                "--grpc-tls-ca", self.ca]

    def client_context(self):
        """An ssl.SSLContext that trusts the CA (for https)."""
        return ssl.create_default_context(cafile=self.ca)


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

class Proc(imctest.Server):
    """One process of the cluster (or a backend a test owns): argv, its
    stderr kept, ready when ready() says so. Not restartable: clone() gives
    a new one with the same command line."""

    STDOUT = subprocess.DEVNULL  # what becomes of its standard output

    def __init__(self, argv, name, port, workdir, secret=None, node_id=None):
        super().__init__(secret=secret, node_id=node_id, data_dir=workdir,
                         name=name)
        self.argv = list(argv)
        self.port = port  # where ready() asks; clients connect here
        self.expect_exit = False  # the test stopped it: check() skips it

    def clone(self):
        return type(self)(self.argv, self.name, self.port, self.data_dir,
                          self.secret, self.node_id)

    def ready(self):
        """True once the process serves; override."""
        raise NotImplementedError

    def kill9(self):
        """SIGKILL by pid; the process must not have exited before."""
        self._check_running("before its kill -9")
        self.expect_exit = True
        self.kill()
        self._reader.join(timeout=2)
        if self.proc.returncode != -signal.SIGKILL:
            raise AssertionError("%s: exit status %s after SIGKILL"
                                 % (self.name, self.proc.returncode))

    def start(self):
        self.args = self.argv
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self.STDOUT,
            stderr=subprocess.PIPE, preexec_fn=imctest._pdeathsig)
        imctest._servers.append(self)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        return self

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        why = None
        while True:
            self._check_running("while starting")
            try:
                why = self.ready()
                if why is True:
                    return self
            except (OSError, AssertionError) as e:
                why = e
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError("%s not ready within %.0f s (last: %s)"
                                     "\ncommand: %s\n%s"
                                     % (self.name, timeout, why,
                                        " ".join(self.argv),
                                        self.stderr_text()))
            time.sleep(0.1)


class Host(Proc):
    """im-gateway or im-service: ready when GET /readyz answers 200 (over
    TLS with the ssl.SSLContext tls, when its port speaks TLS)."""

    tls = None

    def ready(self):
        r = imctest.http_get(self.port, "/readyz", timeout=5, tls=self.tls)
        return True if r.status == 200 else r

    def clone(self):
        c = super().clone()
        c.tls = self.tls
        return c


class Redis(Proc):
    """A redis-server of a test's own on 127.0.0.1:port, without
    persistence: a new one on the same port starts empty. durable: an
    append-only file written before each answer (appendfsync always), so
    a clone started after a kill -9 holds every write it acknowledged."""

    @classmethod
    def new(cls, workdir, durable=False):
        port = free_port()
        argv = [shutil.which("redis-server") or "redis-server", "--port",
                str(port), "--bind", "127.0.0.1", "--save", "",
                "--dir", workdir]
        argv += ["--appendonly", "yes", "--appendfsync", "always"] \
            if durable else ["--appendonly", "no"]
        return cls(argv, "redis-server :%d" % port, port, workdir)

    def ready(self):
        with socket.create_connection(("127.0.0.1", self.port),
                                      timeout=2) as s:
            s.sendall(b"PING\r\n")
            got = s.recv(64)
        return True if got.startswith(b"+PONG") else got


class MariaDB(Proc):
    """A mariadbd of a test's own on 127.0.0.1:port, with its data in
    workdir, the user and password of IMCHAT_MYSQL_USER/PASSWORD allowed
    the databases imchat_* (as scripts/servers.sh sets up the shared one):
    a test may kill it without touching what other suites use. A clone
    runs on the same data (InnoDB's crash recovery after a kill -9)."""

    @classmethod
    def new(cls, workdir):
        datadir = os.path.join(workdir, "mariadb")
        os.makedirs(datadir)
        init = os.path.join(workdir, "mariadb-init.sql")
        user = os.environ["IMCHAT_MYSQL_USER"]
        pw = os.environ.get("IMCHAT_MYSQL_PASSWORD", "").replace("'", "''")
        with open(init, "w") as f:
            f.write("FLUSH PRIVILEGES;\n"
                    "CREATE USER '%s'@'127.0.0.1' IDENTIFIED BY '%s';\n"
                    "GRANT ALL PRIVILEGES ON `imchat\\_%%`.* TO "
                    "'%s'@'127.0.0.1';\n" % (user, pw, user))
        r = subprocess.run(
            ["mariadb-install-db", "--no-defaults", "--datadir=" + datadir,
             "--user=root", "--auth-root-authentication-method=normal",
             "--skip-test-db", "--extra-file=" + init],
            capture_output=True, text=True, timeout=180,
            stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise AssertionError("mariadb-install-db failed (%d): %s%s"
                                 % (r.returncode, r.stdout, r.stderr))
        port = free_port()
        argv = [shutil.which("mariadbd") or "mariadbd", "--no-defaults",
                "--datadir=" + datadir, "--socket=" + datadir + ".sock",
                "--pid-file=" + datadir + ".pid", "--port=%d" % port,
                "--bind-address=127.0.0.1", "--user=root",
                "--skip-name-resolve", "--skip-log-bin",
                "--innodb-buffer-pool-size=64M",
                "--log-error=" + datadir + ".err"]
        return cls(argv, "mariadbd :%d" % port, port, workdir)

    @property
    def address(self):
        return addr(self.port)

    def ready(self):
        env = dict(os.environ,
                   MYSQL_PWD=os.environ.get("IMCHAT_MYSQL_PASSWORD", ""))
        r = subprocess.run(
            ["mariadb-admin", "--no-defaults", "-h", "127.0.0.1", "-P",
             str(self.port), "-u", os.environ["IMCHAT_MYSQL_USER"], "ping"],
            env=env, capture_output=True, text=True, timeout=10,
            stdin=subprocess.DEVNULL)
        return True if r.returncode == 0 else r.stderr.strip()


class KafkaMock(Proc):
    """librdkafka's mock cluster (tests/engines/kafka_mock) of a test
    class's own: its consumer groups start empty. Ready once it printed
    its bootstrap servers (self.bootstrap) and its control address
    (self.control: topics, brokers down and up)."""

    STDOUT = subprocess.PIPE

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._out = b""
        self.bootstrap = None
        self.control = None

    def command(self, line):
        """One command of the control port (kafka_mock.c); fails unless
        the answer is "ok"."""
        host, _, port = self.control.rpartition(":")
        with socket.create_connection((host, int(port)),
                                      timeout=imctest.IO_TIMEOUT) as s:
            s.sendall(line.encode() + b"\n")
            got = b""
            while not got.endswith(b"\n"):
                data = s.recv(256)
                if not data:
                    break
                got += data
        if got != b"ok\n":
            raise AssertionError("kafka_mock %r: %r" % (line, got))

    def broker(self, broker_id, state):
        """Broker broker_id (1..3) "down" or "up"."""
        self.command("broker %d %s" % (broker_id, state))

    @classmethod
    def new(cls, workdir):
        return cls([KAFKA_MOCK], "kafka_mock", None, workdir)

    def ready(self):
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            data = os.read(fd, 4096)
            if not data:
                break
            self._out += data
        for line in self._out.decode().splitlines():
            if line.startswith("control "):
                self.control = line.split(" ", 1)[1]
            if re.fullmatch(r"127\.0\.0\.1:\d+(,127\.0\.0\.1:\d+)*", line):
                self.bootstrap = line
                return True
        return "no bootstrap servers yet"


class Cluster:
    """One im-service and three im-gateways (gw-a, gw-b, gw-c) on the test
    backends, with a database and a mock Kafka cluster of their own. Extra
    flags per role; redis: the address for im-service (default
    IMC_TEST_REDIS); gateways: how many (at most three); grpc_tls: mutual
    TLS on every gRPC link, each process with a certificate of its own
    from self.pki (a GrpcPki), named like the process ("svc0", "gw-a"),
    and im-service's HTTP port over TLS (--tls-cert, "svc0-http");
    mariadb: HOST:PORT of the MariaDB server that holds the database
    (default the one of IMC_TEST_MARIADB)."""

    NAMES = ("a", "b", "c")

    def __init__(self, label, gateway_flags=(), service_flags=(),
                 redis=None, admin_token=None, services=1, gateways=3,
                 grpc_tls=False, mariadb=None):
        self.tag = tag()
        self.label = label
        self.workdir = imctest.mkdtemp("cluster")
        self.kafka = KafkaMock.new(self.workdir)
        self.db = None
        self.service = None  # the first of self.services
        self.services = []
        self.n_services = services
        self.n_gateways = gateways
        self.pki = GrpcPki(self.workdir) if grpc_tls else None
        self.gateways = []
        self.mariadb = mariadb
        self._flags = (list(gateway_flags), list(service_flags),
                       redis or os.environ["IMC_TEST_REDIS"], admin_token)

    def _hosts(self):
        gateway_flags, service_flags, redis, admin_token = self._flags
        common = ["--etcd", os.environ["IMC_TEST_ETCD"],
                  "--kafka", self.kafka.bootstrap,
                  # a killed consumer's partitions move in seconds
                  "--kafka-session-timeout", "6",
                  "--mysql", mysql_address(self.db, self.mariadb)]

        def tls(name):
            return self.pki.flags(name) if self.pki else []

        def http_tls(name):
            if not self.pki:
                return []
            cert, key, _ = self.pki.issue(name)
            return ["--tls-cert", cert, "--tls-key", key]
        grpc_addrs = []
        for i in range(self.n_services):
            svc_grpc, svc_http = addr(free_port()), free_port()
            grpc_addrs.append(svc_grpc)
            self.services.append(Host(
                [IM_SERVICE, "--grpc-listen", svc_grpc,
                 "--http-listen", addr(svc_http), "--redis", redis,
                 "--node-id", "svc%d-%s" % (i, self.tag)] + common +
                tls("svc%d" % i) + http_tls("svc%d-http" % i) +
                service_flags,
                "im-service %d (%s)" % (i, self.label), svc_http,
                self.workdir))
            if self.pki:
                self.services[-1].tls = self.pki.client_context()
        self.service = self.services[0]
        svc_grpc = ",".join(grpc_addrs)
        for n in self.NAMES[:self.n_gateways]:
            node = "gw-%s-%s" % (n, self.tag)
            port = free_port()
            argv = [IM_GATEWAY, "--listen", addr(port),
                    "--grpc-listen", addr(free_port()), "--router", svc_grpc,
                    "--node-id", node, "--jwt-secret", imctest.SECRET]
            if admin_token:
                argv += ["--admin-token", admin_token]
            self.gateways.append(
                Host(argv + common + tls("gw-" + n) + gateway_flags,
                     "im-gateway %s (%s)" % (node, self.label), port,
                     self.workdir, secret=imctest.SECRET, node_id=node))

    def start(self):
        """The mock Kafka and the database, im-service (it applies the
        schema), then the gateways; returns once every one is ready."""
        try:
            self.kafka.start().wait_ready()
            self.db = create_database(self.mariadb)
            self._hosts()
            self.service.start().wait_ready()  # it applies the schema
            for s in self.services[1:]:
                s.start().wait_ready()
            for g in self.gateways:
                g.start()
            for g in self.gateways:
                g.wait_ready()
        except BaseException:
            self.kill_all()
            if self.db:
                drop_database(self.db, self.mariadb)
            raise
        return self

    def procs(self):
        """The hosts, then the mock Kafka."""
        return self.services + self.gateways + [self.kafka]

    def restart_service(self):
        """A new im-service with the same flags (ports, database) in place
        of the one that stopped; returns once it and the gateways are
        ready again (the gateways reconnect on their own)."""
        assert not self.service.alive(), "im-service still running"
        self.service = self.service.clone().start().wait_ready()
        self.services[0] = self.service
        for g in self.gateways:
            if g.alive():
                g.wait_ready()
        return self.service

    def check(self, when):
        """Every process still running is healthy (no sanitizer report);
        a process that died unasked fails."""
        for p in self.procs():
            if not p.expect_exit:
                p.check_alive(when)
            p.check_sanitizers()

    def kill_all(self):
        for p in self.procs():
            p.kill()

    def stop(self):
        """SIGTERM to each running process (gateways first, the mock Kafka
        last): each must exit 0 without a sanitizer report. Then the
        database goes."""
        try:
            errors = []
            for p in self.gateways + self.services + [self.kafka]:
                if not p.alive():
                    continue
                try:
                    p.stop()
                except AssertionError as e:
                    errors.append(str(e))
            if errors:
                raise AssertionError("\n".join(errors))
        finally:
            self.kill_all()
            drop_database(self.db, self.mariadb)


class LogsOnFailure:
    """A TestCase mixin: when a test fails, the tail of each process's
    stderr (procs_to_show()) is printed, to tell why."""

    LOG_TAIL = 100

    def procs_to_show(self):
        raise NotImplementedError

    def run(self, result=None):
        def bad():
            return len(result.failures) + len(result.errors) if result \
                else 0
        before = bad()
        try:
            return super().run(result)
        finally:
            if bad() > before:
                for p in self.procs_to_show():
                    print(p.stderr_text(tail=self.LOG_TAIL), file=sys.stderr)

#!/usr/bin/python3
"""End-to-end, with counts: no message lost in the cluster while its
processes and backends fail one after the other.

One im-service and three im-gateways (tests/e2e/cluster.py) on a Redis,
a MariaDB and a mock Kafka cluster of this test's own (etcd is the shared
one). Four senders, spread over the gateways, send IMC_NOLOSS_MESSAGES
(default 50,000) messages in all, pipelined, to three recipients who stay
online (one per gateway: they ACK every push and reconnect, to any
gateway, after losing their connection) and two who stay offline. While
messages are in flight, in turn, each fault followed by recovery before
the next:
  1. im-service killed (kill -9) and restarted;
  2. gateway gw-b killed (kill -9): its clients reconnect to another
     gateway; once its etcd lease ran out it is restarted;
  3. Redis killed (kill -9), down for DOWN_S, restarted on its data:
     Redis holds the sequence counters (whose durable marks are in
     MariaDB, so they never go back even without Redis' data) and the
     dedup set, which lives in Redis alone (doc/operations.md): without
     it a resend of an earlier message would be routed again with a new
     msg_id. Run as doc/operations.md asks for exact resends across a
     failure, this Redis keeps an append-only file written before each
     answer (appendfsync always), so the restarted one has every
     acknowledged write;
  4. MariaDB (a mariadbd of this test's own) killed (kill -9), down for
     DOWN_S, restarted on its data (InnoDB's crash recovery);
  5. Kafka broker 1 taken down for DOWN_S and brought back (the mock's
     control port; its partitions wait for it).
A sender resends, with the same client_msg_id, every message without a
final status after it reconnects and once the faults are over; an
UNAVAILABLE answer is retried with backoff, as a client does (a status
confirms a message, as in imc_client's outbox). Once every send is
answered and the history holds every acknowledged message, the senders
wait QUIET_S for the last statuses; then every recipient reads its
/offline inbox too and noloss.py checks the
books: every DELIVERED or STORED message received exactly once after
dedup by msg_id, with its SendAck's msg_id and seq; every other
acknowledged one in the history; no client_msg_id with two msg_ids; no
seq given twice or going back; nothing unsent arrived. It prints sent /
acknowledged / DELIVERED / STORED / received / duplicates removed, in
all and per fault.

Run (backends as scripts/servers.sh starts them): the environment of
tests/e2e/test_cluster.py, then
  /usr/bin/python3 tests/e2e/test_cluster_noloss.py
"""

import asyncio
import heapq
import os
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cluster  # noqa: E402
import imctest  # noqa: E402
from imctest import IO_TIMEOUT, send_frame, welcome  # noqa: E402
from noloss import Ledger, history_all, wait_either  # noqa: E402
from test_crash import NO_LIMITS, offline_all, token  # noqa: E402

import websockets.exceptions  # noqa: E402

TOTAL = int(os.environ.get("IMC_NOLOSS_MESSAGES", "50000"))
SENDERS = ["cs0", "cs1", "cs2", "cs3"]
ONLINE = ["con0", "con1", "con2"]
OFFLINE = ["coff0", "coff1"]
WINDOW = 100  # unanswered sends per sender
DOWN_S = 3.0  # how long a backend stays down (the fault's length)
LEASE_TTL = 3  # s: the gateways' etcd lease
KAFKA_BROKER = 1  # the broker taken down
RETRY_MIN, RETRY_MAX = 0.1, 2.0  # s: backoff of a send answered UNAVAILABLE
QUIET_S = 10.0  # the end: no frame this long, the statuses still due came
RECONNECT_S = 60.0  # a client finds a gateway within this
# A process killed with its work in flight: im-service honours a dead
# router's claims until they expire (60 s); the worker's Kafka group
# rebalances after a member's session (45 s).
RECOVER_S = 180.0
BOUND_S = 600.0
CLOSED = (websockets.exceptions.WebSocketException, OSError,
          asyncio.TimeoutError)


def pb():
    return imctest.pb()


async def blocking(fn, *args):
    """fn(*args) in a thread: the clients keep running meanwhile. Never
    one that starts a process: a child dies with the thread that started
    it (imctest's PR_SET_PDEATHSIG), and the executor's threads end."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def restarted(proc):
    """A clone of the stopped proc, started on this thread; once ready."""
    p = proc.clone().start()
    await blocking(p.wait_ready)
    return p


async def until(cond, what, timeout):
    """Returns once cond() holds; fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("%s: not within %.0f s" % (what, timeout))
        await asyncio.sleep(0.05)


def readyz(host):
    try:
        return imctest.http_get(host.port, "/readyz", timeout=5).status
    except (OSError, AssertionError):
        return None


class Run:
    """The clients of one test: senders, online recipients, and where
    they connect."""

    def __init__(self, test, cl, books):
        self.cl = cl
        self.books = books
        n = books.total // len(books.senders)
        self.n = n
        self.cap = 0  # first sends allowed per sender so far
        self.faults_done = False
        self.caught_up = None  # when the history held every SendAck's
        self.senders = [Sender(self, u, i % len(cl.gateways))
                        for i, u in enumerate(books.senders)]
        self.online = {u: False for u in test.online}
        self.senders_done = 0

    def allow(self, cap):
        self.cap = min(cap, self.n)
        for s in self.senders:
            s.kick.set()

    def first_sends(self):
        return len(self.books.first_sent)

    def acks(self):
        return len(self.books.acked)

    def at_cap(self):
        return all(s.index >= min(self.cap, self.n) for s in self.senders)

    def all_connected(self):
        return all(self.online.values()) and \
            all(s.connected for s in self.senders)

    async def connect(self, user, home):
        """A WebSocket of user's after Welcome, from the first live
        gateway from `home` on; retried as a client does."""
        gws = self.cl.gateways
        deadline = time.monotonic() + RECONNECT_S
        while True:
            for j in range(len(gws)):
                gw = gws[(home + j) % len(gws)]
                if not gw.alive():
                    continue
                try:
                    ws = await gw.connect(token=token(user))
                except CLOSED:
                    continue
                try:
                    await welcome(ws)
                    return ws
                except CLOSED + (AssertionError,):
                    await close(ws)
            if time.monotonic() > deadline:
                raise AssertionError("%s found no gateway within %.0f s"
                                     % (user, RECONNECT_S))
            await asyncio.sleep(0.2)  # the client's reconnect backoff

    async def recipient(self, user, home):
        """ACKs every push; reconnects after losing its connection; ends
        once the senders are done and nothing came for a second."""
        first = True
        while True:
            ws = await self.connect(user, home)
            if not first:
                self.books.phase.reconnects += 1
            first = False
            self.online[user] = True
            last = [time.monotonic()]
            reading = asyncio.ensure_future(self.take(user, ws, last))
            try:
                while not reading.done():
                    await asyncio.wait([reading], timeout=0.5)
                    if self.senders_done == len(self.senders) and \
                            time.monotonic() - last[0] > 1.0:
                        return
                reading.result()
            except CLOSED:
                pass
            finally:
                self.online[user] = False
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
                await close(ws)

    async def take(self, user, ws, last):
        """Reads ws until it closes: every push recorded and ACKed."""
        async for raw in ws:
            last[0] = time.monotonic()
            fr = pb().ServerFrame()
            fr.ParseFromString(raw)
            if fr.WhichOneof("body") != "deliver":
                continue
            m = fr.deliver.message
            self.books.on_push(user, m)
            ack = pb().ClientFrame(id=0)
            ack.deliver_ack.msg_ids.append(m.msg_id)
            await send_frame(ws, ack)

    async def sender(self, s):
        try:
            await s.serve()
        finally:
            self.senders_done += 1


async def close(ws):
    try:
        await asyncio.wait_for(ws.close(), IO_TIMEOUT)
    except CLOSED:
        pass


class Sender:
    """One sender's device: sends its plan pipelined (first sends up to
    the run's cap), resends what an UNAVAILABLE answer refused after a
    backoff, and after a reconnect and at the end everything without a
    final status, with the same client_msg_id."""

    def __init__(self, run, user, home):
        self.run = run
        self.user = user
        self.home = home
        self.books = run.books
        self.plan = [c for c, _ in self.books.plan[user]]
        self.to = dict(self.books.plan[user])
        self.index = 0  # first sends so far
        self.due = {}  # cmid -> when it is to be sent again
        self.heap = []  # (when, cmid), stale ones skipped
        self.backoff = {}
        self.inflight = {}  # frame id -> cmid, this connection
        self.busy = set()  # cmids in flight
        self.refused = set()  # answered by an Error other than UNAVAILABLE
        self.kick = asyncio.Event()
        self.connected = False
        self.end_swept = False
        self.last_rx = time.monotonic()

    def resend_at(self, cmid, when):
        self.due[cmid] = when
        heapq.heappush(self.heap, (when, cmid))

    def sweep(self):
        """Every message sent without a final status is due again."""
        now = time.monotonic()
        for cmid in self.plan[:self.index]:
            if (self.user, cmid) not in self.books.final and \
                    cmid not in self.busy and cmid not in self.due and \
                    cmid not in self.refused:
                self.resend_at(cmid, now)

    def next_job(self):
        """(cmid or None, seconds until something may be due)."""
        now = time.monotonic()
        while self.heap:
            when, cmid = self.heap[0]
            if self.due.get(cmid) != when:
                heapq.heappop(self.heap)
                continue
            if when > now:
                break
            heapq.heappop(self.heap)
            del self.due[cmid]
            if (self.user, cmid) in self.books.final or cmid in self.busy:
                continue
            return cmid, 0
        if self.index < min(self.run.cap, len(self.plan)):
            self.index += 1
            return self.plan[self.index - 1], 0
        return None, (self.heap[0][0] - now) if self.heap else 1.0

    def finished(self):
        if self.index < len(self.plan) or self.due or self.inflight or \
                not self.run.faults_done:
            return False
        if all((self.user, c) in self.books.final or c in self.refused
               for c in self.plan):
            return True
        if not self.end_swept:
            self.end_swept = True
            self.sweep()
            return False
        caught_up = self.run.caught_up
        return caught_up is not None and \
            time.monotonic() - max(self.last_rx, caught_up) > QUIET_S

    def drained(self):
        """Everything sent and answered, the final resends too."""
        return self.end_swept and not self.due and not self.inflight and \
            self.index == len(self.plan)

    async def serve(self):
        first = True
        while True:
            ws = await self.run.connect(self.user, self.home)
            if not first:
                self.books.phase.reconnects += 1
                self.sweep()
            first = False
            self.connected = True
            try:
                if await self.session(ws):
                    return
            except CLOSED:
                pass
            finally:
                self.connected = False
                for cmid in self.inflight.values():
                    self.busy.discard(cmid)
                self.inflight.clear()
                await close(ws)

    async def session(self, ws):
        """Sends and reads on one connection; True once finished."""
        reading = asyncio.ensure_future(self.read(ws))
        fid = 0
        try:
            while True:
                if reading.done():
                    reading.result()
                if self.finished():
                    return True
                cmid, wait = (None, 1.0) if len(self.inflight) >= WINDOW \
                    else self.next_job()
                if cmid is None:
                    self.kick.clear()
                    await wait_either(reading, self.kick,
                                      min(max(wait, 0.01), 1.0))
                    continue
                fid += 1
                self.inflight[fid] = cmid
                self.busy.add(cmid)
                f = pb().ClientFrame(id=fid)
                f.send.client_msg_id = cmid
                f.send.user_id = self.to[cmid]
                f.send.body = ("%s %s" % (self.user, cmid)).encode()
                f.send.content_type = "text/plain"
                self.books.count_send(self.user, cmid)
                await send_frame(ws, f)
        finally:
            reading.cancel()
            try:
                await reading
            except (asyncio.CancelledError,) + CLOSED:
                pass

    async def read(self, ws):
        unavailable = pb().Error.UNAVAILABLE
        while True:
            raw = await ws.recv()
            self.last_rx = time.monotonic()
            fr = pb().ServerFrame()
            fr.ParseFromString(raw)
            if fr.id and fr.id in self.inflight:
                cmid = self.inflight.pop(fr.id)
                self.busy.discard(cmid)
                if fr.WhichOneof("body") == "error" and \
                        fr.error.code == unavailable:
                    self.books.on_unavailable(self.user, cmid, fr.error)
                    b = min(self.backoff.get(cmid, RETRY_MIN / 2) * 2,
                            RETRY_MAX)
                    self.backoff[cmid] = b
                    self.resend_at(cmid, time.monotonic() + b)
                else:
                    self.books.on_answer(self.user, cmid, fr)
                    self.backoff.pop(cmid, None)
                    if fr.WhichOneof("body") != "send_ack":
                        self.refused.add(cmid)
            elif fr.WhichOneof("body") == "status":
                self.books.on_status(self.user, fr.status)
            self.kick.set()


class TestClusterNoLoss(cluster.LogsOnFailure, imctest.AsyncTestCase):
    LOG_TAIL = 200

    @classmethod
    def setUpClass(cls):
        cls.workdir = imctest.mkdtemp("noloss")
        cls.redis = cluster.Redis.new(cls.workdir, durable=True)
        cls.mariadb = cluster.MariaDB.new(cls.workdir)
        cls.cl = None
        try:
            cls.redis.start().wait_ready()
            cls.mariadb.start().wait_ready()
            cls.cl = cluster.Cluster(
                cls.__name__,
                gateway_flags=NO_LIMITS + ["--heartbeat", "1", "--lease-ttl",
                                           str(LEASE_TTL)],
                redis=cluster.addr(cls.redis.port),
                mariadb=cls.mariadb.address).start()
        except BaseException:
            cls.redis.kill()
            cls.mariadb.kill()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.cl:
                cls.cl.stop()
        finally:
            cls.redis.kill()
            cls.mariadb.kill()

    def u(self, name):
        return "%s-%s" % (name, self.cl.tag)

    # -- the faults: each returns once the cluster is back --

    async def backend_down(self, what, attr):
        """Kills the backend of the class attribute attr; it stays down
        DOWN_S, while im-service says so on /readyz; then it is restarted
        on its data, and im-service is ready again."""
        svc = self.cl.service
        cls = type(self)
        await blocking(getattr(cls, attr).kill9)
        await until(lambda: readyz(svc) == 503, "im-service notices that "
                    "%s is down" % what, IO_TIMEOUT)
        await asyncio.sleep(DOWN_S)  # the fault's length
        setattr(cls, attr, await restarted(getattr(cls, attr)))
        await until(lambda: readyz(svc) == 200, "im-service ready with %s "
                    "back" % what, RECOVER_S)

    async def fault_service(self):
        await blocking(self.cl.service.kill9)
        self.cl.service = await restarted(self.cl.service)
        self.cl.services[0] = self.cl.service

    async def fault_gateway(self):
        gw = self.cl.gateways[1]
        await blocking(gw.kill9)
        # Its clients reconnect elsewhere; its registry entries expire.
        for key in ("nodes/" + gw.node_id, "addrs/" + gw.node_id):
            await until(lambda: not cluster.etcd_keys(key),
                        "%s%s gone from etcd" % (cluster.ETCD_PREFIX, key),
                        LEASE_TTL + 15)
        self.cl.gateways[1] = await restarted(gw)

    async def fault_redis(self):
        await self.backend_down("Redis", "redis")

    async def fault_mariadb(self):
        await self.backend_down("MariaDB", "mariadb")

    async def fault_kafka(self):
        kafka = self.cl.kafka
        await blocking(kafka.broker, KAFKA_BROKER, "down")
        await asyncio.sleep(DOWN_S)  # the fault's length
        await blocking(kafka.broker, KAFKA_BROKER, "up")
        await until(lambda: readyz(self.cl.service) == 200,
                    "im-service ready with broker %d back" % KAFKA_BROKER,
                    RECOVER_S)

    async def drive(self, run, faults):
        """Fires each fault while messages are in flight, once the
        senders sent their share before it, and waits for recovery:
        every host ready, every client connected, SendAcks coming."""
        total, n_f = self.books.total, len(faults)
        per = len(SENDERS)
        run.allow(run.n // (n_f + 1) + WINDOW)
        for k, (name, fault) in enumerate(faults):
            await until(lambda: run.first_sends() >= total * (k + 1)
                        // (n_f + 1), "first sends before " + name,
                        RECOVER_S)
            run.allow(run.n * (k + 2) // (n_f + 1) + WINDOW)
            at = min(run.first_sends() + per * WINDOW // 2, total)
            await until(lambda: run.first_sends() >= at,
                        "sends in flight before " + name, RECOVER_S)
            self.books.begin(name)
            t0 = time.monotonic()
            await fault()
            for h in self.cl.services + self.cl.gateways:
                await until(lambda: readyz(h) == 200, h.name + " ready",
                            RECOVER_S)
            await until(run.all_connected, "every client connected after "
                        + name, RECONNECT_S)
            # SendAcks come again (unless the senders wait for the next
            # fault with only resends left: those may wait for claims the
            # killed im-service left, see RECOVER_S).
            acks = run.acks()
            await until(lambda: run.acks() > acks or run.at_cap(),
                        "SendAcks after " + name, RECOVER_S)
            print("no-loss: %s: back after %.1f s" % (
                name, time.monotonic() - t0), file=sys.stderr)
        run.allow(run.n)
        run.faults_done = True
        for s in run.senders:
            s.kick.set()

    def not_in_history(self):
        """The acknowledged messages the history lacks: {msg_id: (user,
        cmid)}."""
        gw = self.cl.gateways[0]
        want = {v[0]: k for k, v in self.books.acked.items()}
        for conv in {v[2] for v in self.books.acked.values()}:
            reader = [u for u in conv.split(":")[1:]
                      if u in self.books.recipients][0]
            for h in history_all(gw, reader, conv, token):
                want.pop(h["msg_id"], None)
        return want

    def worker_metrics(self):
        r = imctest.http_get(self.cl.service.port, "/metrics")
        return " ".join(line for line in r.body.decode().splitlines()
                        if line.startswith("imchat_worker_"))

    async def catch_up(self, run):
        """Once the senders sent and resent everything: waits until the
        worker stored every acknowledged message (its history part; the
        statuses and inbox entries come with it), so that the senders'
        last quiet wait is for statuses only."""
        await until(lambda: all(s.drained() for s in run.senders),
                    "every send answered", RECOVER_S)
        t0 = time.monotonic()
        deadline = t0 + RECOVER_S
        while True:
            lacks = await blocking(self.not_in_history)
            if not lacks:
                break
            if time.monotonic() > deadline:
                by_conv = {}
                for user, cmid in lacks.values():
                    conv = self.books.acked[(user, cmid)][2]
                    phase = self.books.phases[
                        self.books.first_sent[(user, cmid)][0]].name
                    by_conv.setdefault((conv, phase), []).append(cmid)
                self.fail("%d acknowledged messages not in the history "
                          "%.0f s after the last send was answered; by "
                          "conversation and phase of their first send: "
                          "%s; im-service: %s; the first ones: %s" % (
                              len(lacks), RECOVER_S,
                              "; ".join("%s %s: %d (%s..%s)" % (
                                  c, p, len(v), min(v), max(v))
                                  for (c, p), v in sorted(by_conv.items())),
                              self.worker_metrics(),
                              "; ".join(self.books.story(k) for k in
                                        sorted(lacks.values())[:5])))
            await asyncio.sleep(0.5)
        run.caught_up = time.monotonic()
        for s in run.senders:
            s.kick.set()
        print("no-loss: the history held every acknowledged message %.1f s "
              "after the last send was answered" % (run.caught_up - t0),
              file=sys.stderr)

    async def test_counts_across_faults(self):
        t0 = time.monotonic()
        self.online = [self.u(n) for n in ONLINE]
        self.books = Ledger([self.u(n) for n in SENDERS],
                            self.online + [self.u(n) for n in OFFLINE],
                            TOTAL)
        run = Run(self, self.cl, self.books)
        faults = [("im-service kill -9", self.fault_service),
                  ("gateway gw-b kill -9", self.fault_gateway),
                  ("Redis kill -9", self.fault_redis),
                  ("MariaDB kill -9", self.fault_mariadb),
                  ("Kafka broker %d down" % KAFKA_BROKER, self.fault_kafka)]
        tasks = [asyncio.ensure_future(t) for t in
                 [run.recipient(u, i % len(self.cl.gateways))
                  for i, u in enumerate(self.online)] +
                 [run.sender(s) for s in run.senders]]
        try:
            await self.drive(run, faults)
            await self.catch_up(run)
            done, pending = await asyncio.wait(
                tasks, timeout=BOUND_S - (time.monotonic() - t0))
            for t in done:
                t.result()
            self.assertEqual(pending, set(), self.stuck(run))
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        gw = self.cl.gateways[0]
        self.assertEqual(self.books.errors[:10], [], "sends refused or "
                         "answered differently:\n" + self.evidence(gw))
        await self.books.verify(
            self, lambda u: offline_all(gw, u),
            lambda u, conv: history_all(gw, u, conv, token),
            wait=RECOVER_S)
        self.cl.check("after the run")
        print("no-loss: %d messages, %d faults, in %.0f s"
              % (self.books.total, len(faults), time.monotonic() - t0),
              file=sys.stderr)
        self.assertLess(time.monotonic() - t0, BOUND_S)

    def evidence(self, gw):
        """For each message with an error: the UNAVAILABLE answers its
        sends got, and the copies its recipient's inbox holds."""
        out = []
        for user, cmid, what in self.books.errors[:10]:
            to = self.books.to_of[(user, cmid)]
            copies = [(m["msg_id"], m["seq"]) for m in offline_all(gw, to)
                      if m["client_msg_id"] == cmid and
                      m["from_user"] == user]
            out.append("%s %s -> %s: %s; its UNAVAILABLE answers: %s; %s's "
                       "inbox holds it as %s" % (
                           user, cmid, to, what,
                           self.books.refused_once.get((user, cmid)), to,
                           copies))
        return "\n".join(out)

    def stuck(self, run):
        """What the senders still wait for, when the run did not end."""
        return "; ".join(
            "%s: %d of %d sent, %d due again, %d in flight, %d without a "
            "SendAck, %d without a status" % (
                s.user, s.index, len(s.plan), len(s.due), len(s.inflight),
                sum((s.user, c) not in self.books.acked for c in s.plan),
                sum((s.user, c) not in self.books.final for c in s.plan))
            for s in run.senders)

    def procs_to_show(self):
        return self.cl.procs() + [self.redis, self.mariadb]


def main():
    cluster.require_env()
    imctest.main()


if __name__ == "__main__":
    main()

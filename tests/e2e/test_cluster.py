#!/usr/bin/python3
"""End-to-end tests of the cluster: one im-service and three im-gateways
(gw-a, gw-b, gw-c) on the real Redis, MariaDB and etcd that scripts/test.sh
starts and a mock Kafka cluster of their own (tests/e2e/cluster.py). What
a user sees: 1:1 messages across gateways, a group spread over all three,
an offline inbox read through another gateway, and nothing acknowledged
lost when a gateway or im-service is killed with SIGKILL, when Redis comes
back empty or when a gateway is stopped with SIGTERM.

Each test class runs its own cluster on a database of its own, with node
ids and user names no other class uses.

Run (backends as scripts/servers.sh starts them):
  IM_GATEWAY=build/hosts/im-gateway IM_SERVICE=build/hosts/im-service \\
  IMC_KAFKA_MOCK=build/tests/engines/kafka_mock \\
  IMCHATD=build/hosts/imchatd IMC_PROTO_DIR=proto/imchat/v1 \\
  IMC_TEST_REDIS=... IMC_TEST_MARIADB=... IMC_TEST_ETCD=... \\
  IMCHAT_MYSQL_USER=... IMCHAT_MYSQL_PASSWORD=... \\
  /usr/bin/python3 tests/e2e/test_cluster.py [-k PATTERN]
"""

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cluster  # noqa: E402
import imctest  # noqa: E402
from imctest import expect_close  # noqa: E402
from test_chat import ADMIN, ChatTest, http, ids, prom_value  # noqa: E402

# Waits that span Kafka's own timers: a consumer group's first assignment
# (the mock's initial rebalance delay, 3 s); the rebalance after a member
# was killed, which waits for its session (45 s) to run out, at both of
# the mock's stages (joining, then syncing).
SLOW = 30.0
REBALANCE = 180.0
LEASE_TTL = 3  # s: the gateways' etcd lease in TestGatewayKill
ROUTER_TTL = 5  # s: im-service's liveness lease (hosts/cluster/liveness.c)


def pb():
    return imctest.pb()


def stored(st):
    return st.state == pb().DeliveryStatus.STORED


class ClusterTest(cluster.LogsOnFailure, ChatTest):
    """A cluster per class (started once, stopped after its last test); a
    test fails if one of its processes died unasked or a sanitizer spoke."""

    GATEWAY_FLAGS = ()
    SERVICE_FLAGS = ()
    SERVICES = 1

    @classmethod
    def setUpClass(cls):
        cls.cluster = cluster.Cluster(
            cls.__name__, gateway_flags=cls.GATEWAY_FLAGS,
            service_flags=cls.SERVICE_FLAGS, redis=cls.redis_address(),
            admin_token=ADMIN, services=cls.SERVICES).start()

    @classmethod
    def redis_address(cls):
        return None  # IMC_TEST_REDIS

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    async def asyncTearDown(self):
        try:
            await super().asyncTearDown()
        finally:
            self.cluster.check("after " + self.id())

    def procs_to_show(self):
        return self.cluster.procs()

    @property
    def gw(self):
        return self.cluster.gateways

    def u(self, name):
        """The user id `name` of this cluster."""
        return "%s-%s" % (name, self.cluster.tag)

    async def on(self, gw, user, device=None, stack=None):
        """A client of user connected to gateway gw, once the registry
        names gw for it: Welcome comes before the gateway's write to etcd,
        and a message sent in between is stored rather than pushed."""
        c = await self.client(gw, user, device, stack=stack)
        self.assertEqual(c.welcome.node_id, gw.node_id, c.welcome)
        deadline = time.monotonic() + imctest.IO_TIMEOUT
        while not cluster.registered_on(user, c.device, gw.node_id):
            self.assertLess(time.monotonic(), deadline,
                            "%r not in etcd as on %s" % (c, gw.node_id))
            await asyncio.sleep(0.05)
        return c

    async def delivered(self, sender, receiver, **send):
        """sender sends, receiver gets and ACKs it, sender sees DELIVERED;
        returns the SendAck."""
        a = await sender.sent(**send)
        m = await receiver.deliver(a.msg_id)
        await receiver.ack(m.msg_id)
        st = await sender.status(a.msg_id)
        self.assertEqual(st.state, pb().DeliveryStatus.DELIVERED, st)
        return a

    async def stored_send(self, sender, timeout=imctest.IO_TIMEOUT, **send):
        """sender sends and sees STORED; returns the SendAck."""
        a = await sender.sent(**send)
        st = await sender.status(a.msg_id, timeout=timeout)
        self.assertEqual(st.state, pb().DeliveryStatus.STORED, st)
        return a

    async def send_retrying(self, client, timeout, **send):
        """send(); an UNAVAILABLE answer (a backend or a claim still
        coming back) is retried with the same client_msg_id for up to
        timeout seconds, as a client does. The SendAck."""
        send.setdefault("cmid", "r-%d" % time.monotonic_ns())
        deadline = time.monotonic() + timeout
        while True:
            r = await client.reply(await client.send(**send))
            if r.WhichOneof("body") == "send_ack":
                return r.send_ack
            self.assertEqual(r.WhichOneof("body"), "error", r)
            self.assertEqual(r.error.code, pb().Error.UNAVAILABLE, r)
            self.assertLess(time.monotonic(), deadline, r)
            await asyncio.sleep(0.5)

    def inbox(self, gw, user):
        return self.offline(gw, user, limit=1000)

    def wait_inbox(self, gw, user, msg_ids, timeout=SLOW):
        """user's inbox, once it holds every one of msg_ids."""
        want = set(msg_ids)
        return self.wait_page(lambda: self.inbox(gw, user),
                              lambda p: want <= set(ids(p)),
                              "%s's inbox with %d messages" % (user,
                                                               len(want)),
                              timeout)


# ---------------------------------------------------------------------------
# Messages across gateways
# ---------------------------------------------------------------------------

class TestTwoServices(ClusterTest):
    """Two im-service processes: the gateways spread their calls over
    both, and go on with the other when one is killed."""

    SERVICES = 2

    def sends_of(self, svc):
        r = http(svc.port, "GET", "/metrics")
        self.assertEqual(r.status, 200, r)
        return prom_value(r.body.decode(), "imchat_router_sends_total")

    async def test_spread_and_one_killed(self):
        alice, bob = self.u("alice"), self.u("bob")
        ca = await self.on(self.gw[0], alice)
        cb = await self.on(self.gw[1], bob)
        for i in range(6):
            await self.delivered(ca, cb, to=bob, body=b"m%d" % i)
        first, second = self.cluster.services
        self.assertGreater(self.sends_of(first), 0)
        self.assertGreater(self.sends_of(second), 0)

        second.kill9()
        for i in range(6):
            a = await self.send_retrying(ca, SLOW, to=bob, body=b"n%d" % i)
            m = await cb.deliver(a.msg_id)
            await cb.ack(m.msg_id)
            st = await ca.status(a.msg_id)
            self.assertEqual(st.state, pb().DeliveryStatus.DELIVERED, st)
        for g in self.gw:
            self.assertEqual(http(g.port, "GET", "/readyz").status, 200)


class TestRouting(ClusterTest):

    async def test_one_to_one_across_gateways(self):
        alice, bob = self.u("alice"), self.u("bob")
        ca = await self.on(self.gw[0], alice)
        cb = await self.on(self.gw[1], bob)
        conv = "p:%s:%s" % (alice, bob)

        fid = await ca.send(to=bob, body=b"hello from gw-a", cmid="x-1")
        r = await ca.reply(fid)
        self.assertEqual(r.WhichOneof("body"), "send_ack", r)
        a = r.send_ack
        self.assertEqual((a.client_msg_id, a.conversation_id, a.seq),
                         ("x-1", conv, 1))
        self.assertRegex(a.msg_id, r"^[0-9a-f]{32}$")
        m = await cb.deliver(a.msg_id)
        self.assertEqual((m.conversation_id, m.seq, m.from_user, m.to_user,
                          m.body, m.client_msg_id, m.sent_at_ms),
                         (conv, 1, alice, bob, b"hello from gw-a", "x-1",
                          a.sent_at_ms))
        await ca.no_status(a.msg_id)  # not DELIVERED before the ACK
        await cb.ack(m.msg_id)
        st = await ca.status(a.msg_id)
        self.assertEqual((st.state, st.user_id, st.client_msg_id),
                         (pb().DeliveryStatus.DELIVERED, bob, "x-1"), st)

        # The answer travels back the other way, in the same conversation.
        b = await self.delivered(cb, ca, to=alice, body=b"hi from gw-b")
        self.assertEqual((b.conversation_id, b.seq), (conv, 2))
        await ca.no_status(a.msg_id)  # one status per message
        await ca.no_deliver()
        await cb.no_deliver()
        self.assertEqual(ids(self.inbox(self.gw[2], bob)), [])

    async def test_group_on_three_gateways(self):
        alice, bob, carol, dave, erin = (self.u(n) for n in (
            "alice", "bob", "carol", "dave", "erin"))
        group = self.u("team")
        for user in (alice, bob, carol, dave, erin):
            self.add_member(self.gw[0], group, user)
        # Membership is the cluster's, whichever gateway is asked.
        self.assertEqual(self.members(self.gw[2], group),
                         sorted([alice, bob, carol, dave, erin]))

        ca = await self.on(self.gw[0], alice, "phone")
        ca2 = await self.on(self.gw[1], alice, "laptop")
        cb = await self.on(self.gw[1], bob)
        cc = await self.on(self.gw[2], carol)
        cd = await self.on(self.gw[2], dave)
        # erin is offline.

        a = await ca.sent(group=group, body=b"hello everyone", cmid="g-1")
        self.assertEqual((a.conversation_id, a.seq), ("g:" + group, 1))
        # The first group message waits for the gateways' Kafka consumers
        # to get their partitions.
        for c in (ca2, cb, cc, cd):
            m = await c.deliver(a.msg_id, timeout=SLOW)
            self.assertEqual((m.group_id, m.seq, m.from_user, m.from_device,
                              m.body), (group, 1, alice, "phone",
                                        b"hello everyone"), c)
            await c.ack(m.msg_id)
        st = await ca.status(a.msg_id, timeout=SLOW)
        self.assertEqual((st.state, st.user_id, st.client_msg_id),
                         (pb().DeliveryStatus.STORED, "", "g-1"), st)

        # A second one: each member gets it once, the sender one status.
        b = await cc.sent(group=group, body=b"second")
        self.assertEqual(b.seq, 2)
        for c in (ca, ca2, cb, cd):
            await c.ack((await c.deliver(b.msg_id)).msg_id)
        self.assertTrue(stored(await cc.status(b.msg_id)))
        await ca.no_status(a.msg_id)
        await cc.no_status(b.msg_id)
        for c in (ca, ca2, cb, cc, cd):
            await c.no_deliver(seconds=0.2)
        await ca.no_deliver(a.msg_id)  # never to the sending device
        await cc.no_deliver(b.msg_id)

        # erin reads both from her inbox, through any gateway.
        p = self.wait_inbox(self.gw[1], erin, [a.msg_id, b.msg_id])
        self.assertEqual(ids(p), [a.msg_id, b.msg_id])
        self.assertEqual(ids(self.inbox(self.gw[2], erin)), ids(p))

    async def test_offline_then_other_gateway(self):
        alice, carol = self.u("alice2"), self.u("carol2")
        ca = await self.on(self.gw[0], alice)
        bodies = [bytes(range(256)) + b"%d" % i for i in range(3)]
        sent = []
        for i, body in enumerate(bodies):
            sent.append(await self.stored_send(
                ca, to=carol, body=body, cmid="o-%d" % i,
                ctype="application/octet-stream"))
        self.assertEqual([a.seq for a in sent], [1, 2, 3])

        # carol comes online on another gateway and reads her inbox there.
        cc = await self.on(self.gw[2], carol)
        # Stored messages are fetched, not pushed; one stored just before
        # she came may be pushed too, if the router's check of whether
        # she came online meanwhile (stored_push.c) met her registration.
        stored = {a.msg_id for a in sent}
        await cc.quiet(
            lambda f: f.WhichOneof("body") == "deliver" and
            f.deliver.message.msg_id not in stored,
            "Deliver of a message not stored for her")
        p = self.wait_inbox(self.gw[2], carol, [a.msg_id for a in sent])
        self.assertEqual(ids(p), [a.msg_id for a in sent])
        for a, body, got in zip(sent, bodies, p["messages"]):
            self.assertMsg(got, pb().Message(
                msg_id=a.msg_id, conversation_id=a.conversation_id,
                seq=a.seq, from_user=alice, to_user=carol, body=body,
                content_type="application/octet-stream",
                sent_at_ms=a.sent_at_ms, client_msg_id=a.client_msg_id,
                from_device="default"))
        # Paging from the last cursor: nothing more.
        last = p["next_cursor"]
        self.assertEqual(self.offline(self.gw[1], carol, cursor=last),
                         {"messages": [], "next_cursor": last,
                          "has_more": False})

        # Now online: the next one is pushed to her there.
        a = await self.delivered(ca, cc, to=carol, body=b"you are back")
        self.assertEqual(a.seq, 4)


# ---------------------------------------------------------------------------
# A gateway killed with SIGKILL
# ---------------------------------------------------------------------------

class TestGatewayKill(ClusterTest):

    GATEWAY_FLAGS = ("--heartbeat", "1", "--lease-ttl", str(LEASE_TTL))

    async def test_kill9_gateway(self):
        alice, bob, dave = self.u("alice"), self.u("bob"), self.u("dave")
        gw_a, gw_b, gw_c = self.gw
        ca = await self.on(gw_a, alice)
        async with contextlib.AsyncExitStack() as on_b:
            cb = await self.on(gw_b, bob, stack=on_b)
            await self.on(gw_b, dave, stack=on_b)
            await self.delivered(ca, cb, to=bob, body=b"before")
            self.assertEqual(cluster.etcd_keys("users/%s/" % bob),
                             ["/imchat/users/%s/default" % bob])
            gw_b.kill9()

        # Right away (the registry still names gw-b) and after the lease
        # ran out: every message is stored.
        sent = {bob: [], dave: []}
        a = await self.stored_send(ca, to=bob, body=b"while gw-b lies dead")
        sent[bob].append(a.msg_id)
        deadline = time.monotonic() + LEASE_TTL + 15
        for key in ("users/%s/" % bob, "users/%s/" % dave,
                    "nodes/" + gw_b.node_id, "addrs/" + gw_b.node_id):
            while cluster.etcd_keys(key):
                self.assertLess(time.monotonic(), deadline,
                                "%s%s still in etcd %d s after gw-b died"
                                % (cluster.ETCD_PREFIX, key,
                                   LEASE_TTL + 15))
                await asyncio.sleep(0.2)
        for user in (bob, dave, bob):
            a = await self.stored_send(ca, to=user, body=b"after the lease")
            sent[user].append(a.msg_id)

        # They come back through gw-c: nothing lost, nothing twice.
        for user in (bob, dave):
            await self.on(gw_c, user)
            p = self.wait_inbox(gw_c, user, sent[user])
            self.assertEqual(ids(p), sent[user], user)
        cb = await self.on(gw_c, bob, "tablet")
        await self.delivered(ca, cb, to=bob, body=b"welcome back")
        # Those on the other gateways never noticed.
        self.assertEqual(ids(self.inbox(gw_a, alice)), [])


# ---------------------------------------------------------------------------
# im-service killed with SIGKILL during a burst
# ---------------------------------------------------------------------------

def redis_cli(*args):
    """A command to the test Redis (IMC_TEST_REDIS); its --raw output."""
    host, port = os.environ["IMC_TEST_REDIS"].rsplit(":", 1)
    return subprocess.run(["redis-cli", "-h", host, "-p", port, "--raw"] +
                          list(args), capture_output=True, text=True,
                          check=True, timeout=imctest.IO_TIMEOUT).stdout


def claim_key(user, cmid):
    """The dedup claim of a send (Redis engine prefix "imc:")."""
    return "imc:d:send:%s:%s" % (user, cmid)


def router_instance(svc):
    """The router instance (hex) of a running im-service: the node of its
    liveness key in etcd, whose value is its gRPC address."""
    grpc = svc.argv[svc.argv.index("--grpc-listen") + 1]
    keys = [k for k, v in cluster.etcd_range("addrs/svc-").items()
            if v == grpc]
    assert len(keys) == 1, keys
    return keys[0].rsplit("svc-", 1)[1]


class TestServiceKill(ClusterTest):

    BURST = 100

    async def test_kill9_service_mid_batch(self):
        alice, carol = self.u("alice"), self.u("carol")
        ca = await self.on(self.gw[0], alice)
        cmids = ["k-%03d" % i for i in range(self.BURST)]
        fids = {}

        async def send(some):
            """Sends without waiting; the frame id of the first."""
            first = None
            for cmid in some:
                fid = await ca.send(to=carol, body=cmid.encode(), cmid=cmid)
                fids[fid] = cmid
                first = first or fid
            return first

        # Once the worker stored a batch of the first half, the second half
        # goes out, and im-service is killed (kill -9) when the first of
        # those is acknowledged: some messages are stored, some
        # acknowledged and on their way to the inbox, some in the router's
        # hands, some not read yet.
        await send(cmids[:self.BURST // 2])
        first = await ca.next(lambda f: f.WhichOneof("body") == "status",
                              "the first DeliveryStatus", timeout=SLOW)
        ca.buf.append(first)
        second = await send(cmids[self.BURST // 2:])
        ca.buf.append(await ca.reply(second, timeout=SLOW))
        dead = router_instance(self.cluster.service)
        self.cluster.service.kill9()
        # The claims ("pending <instance>") the killed router left, and a
        # few more as it leaves them when it dies between its claim and
        # the SendAck (a window too short to hit by timing alone).
        values = redis_cli("MGET", *[claim_key(alice, c) for c in cmids])
        claimed = [c for c, v in zip(cmids, values.split("\n"))
                   if v == "pending " + dead]
        planted = ["p-%03d" % i for i in range(5)]
        for cmid in planted:
            redis_cli("SET", claim_key(alice, cmid), "pending " + dead,
                      "EX", "60")
        self.cluster.restart_service()

        # Every send is answered (SendAck, or an Error while no router was
        # there); the statuses seen so far.
        acks, errors, states = {}, {}, {}
        for fid, cmid in fids.items():
            r = await ca.reply(fid, timeout=SLOW)
            if r.WhichOneof("body") == "send_ack":
                acks[cmid] = r.send_ack
            else:
                self.assertEqual(r.WhichOneof("body"), "error", r)
                self.assertEqual(r.error.code, pb().Error.UNAVAILABLE, r)
                errors[cmid] = r.error
        await ca.quiet(lambda f: False, "", seconds=1)  # collect statuses
        for f in ca.buf:
            self.assertEqual(f.WhichOneof("body"), "status", f)
            self.assertNotIn(f.status.msg_id, states, "second status")
            states[f.status.msg_id] = f.status.state
        ca.buf.clear()
        by_msg = {a.msg_id: cmid for cmid, a in acks.items()}
        self.assertTrue(set(states) <= set(by_msg), states)
        was_stored = [m for m, s in states.items()
                      if s == pb().DeliveryStatus.STORED]
        self.assertGreater(len(was_stored), 0)

        # What was STORED before the kill is in the inbox, once.
        p = self.wait_inbox(self.gw[1], carol, was_stored)
        count = collections.Counter(ids(p))
        for m in was_stored:
            self.assertEqual(count[m], 1, (by_msg[m], p))

        # The client resends what has no status yet, with the same
        # client_msg_id, until each is STORED. A claim the killed router
        # left is taken over once its liveness lease has run out: every
        # resend has its SendAck within the lease's TTL and a few seconds
        # (a claim honoured until it expires would take 60 s), with the
        # msg_id of any SendAck seen before.
        pending = [c for c in cmids if c not in
                   {by_msg[m] for m in was_stored}] + planted
        deadline = time.monotonic() + ROUTER_TTL + 5
        for cmid in pending:
            a = await self.send_retrying(
                ca, max(0.0, deadline - time.monotonic()), to=carol,
                body=cmid.encode(), cmid=cmid)
            if cmid in acks:
                self.assertEqual((a.msg_id, a.seq),
                                 (acks[cmid].msg_id, acks[cmid].seq), cmid)
            acks[cmid] = a
        # Resent once more: one client_msg_id, one msg_id.
        for cmid in claimed + planted:
            a = await ca.sent(to=carol, body=cmid.encode(), cmid=cmid)
            self.assertEqual((a.msg_id, a.seq),
                             (acks[cmid].msg_id, acks[cmid].seq), cmid)
        # And each gets its STORED (a message whose router died before
        # its status is delivered again by the resend's router).
        for cmid in pending:
            st = await ca.status(acks[cmid].msg_id, timeout=REBALANCE)
            self.assertTrue(stored(st), st)
        cmids += planted

        # In the end: every message once, with the msg_id and seq it was
        # acknowledged with.
        msg_ids = [acks[c].msg_id for c in cmids]
        p = self.wait_inbox(self.gw[2], carol, msg_ids)
        got = collections.Counter(ids(p))
        self.assertEqual(sorted(got.elements()), sorted(msg_ids),
                         "inbox: %d messages, %d distinct, %d sent"
                         % (len(ids(p)), len(got), len(msg_ids)))
        seqs = sorted(a.seq for a in acks.values())
        self.assertEqual(len(set(seqs)), len(seqs), seqs)
        for m in p["messages"]:
            a = acks[m["client_msg_id"]]
            self.assertEqual((m["msg_id"], m["seq"]), (a.msg_id, a.seq))


# ---------------------------------------------------------------------------
# Redis restarted empty
# ---------------------------------------------------------------------------

class TestRedisRestart(ClusterTest):

    @classmethod
    def redis_address(cls):
        cls.redis = cluster.Redis.new(imctest.mkdtemp("redis"))
        cls.redis.start().wait_ready()
        return cluster.addr(cls.redis.port)

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.redis.stop()

    def redis_up(self):
        r = http(self.cluster.service.port, "GET", "/metrics")
        self.assertEqual(r.status, 200, r)
        return prom_value(r.body.decode(), "imchat_backend_up",
                          'backend="redis"') == 1

    async def test_sequence_numbers_survive_empty_redis(self):
        alice, bob = self.u("alice"), self.u("bob")
        group = self.u("team")
        for user in (alice, bob):
            self.add_member(self.gw[1], group, user)
        ca = await self.on(self.gw[0], alice)
        cb = await self.on(self.gw[1], bob)
        before = [(await self.delivered(ca, cb, to=bob,
                                        body=b"%d" % i)).seq
                  for i in range(3)]
        g_before = []
        for i in range(2):
            a = await ca.sent(group=group, body=b"g%d" % i)
            await cb.ack((await cb.deliver(a.msg_id, timeout=SLOW)).msg_id)
            g_before.append(a.seq)
        self.assertEqual((before, g_before), ([1, 2, 3], [1, 2]))

        # A new Redis on the same port, without the counters.
        type(self).redis.kill9()
        type(self).redis = self.redis.clone().start().wait_ready()
        deadline = time.monotonic() + SLOW
        while not self.redis_up():
            self.assertLess(time.monotonic(), deadline, "redis not back")
            await asyncio.sleep(0.2)

        after = []
        for i in range(3):
            a = await self.send_retrying(ca, SLOW, to=bob,
                                         body=b"after %d" % i)
            m = await cb.deliver(a.msg_id)
            self.assertEqual(m.seq, a.seq)
            await cb.ack(m.msg_id)
            after.append(a.seq)
        a = await self.send_retrying(ca, SLOW, group=group, body=b"g after")
        self.assertEqual((await cb.deliver(a.msg_id)).seq, a.seq)
        self.assertGreater(after[0], before[-1], after)
        self.assertEqual(after, sorted(set(after)), after)
        self.assertGreater(a.seq, g_before[-1])


# ---------------------------------------------------------------------------
# A gateway stopped with SIGTERM
# ---------------------------------------------------------------------------

class TestGracefulStop(ClusterTest):

    async def test_sigterm_gateway(self):
        alice, bob, carol = self.u("alice"), self.u("bob"), self.u("carol")
        gw_a, gw_b, gw_c = self.gw
        ca = await self.on(gw_a, alice)
        cb = await self.on(gw_c, bob)
        cc = await self.on(gw_c, carol)
        a = await ca.sent(to=bob, body=b"in flight")
        await cb.deliver(a.msg_id)  # never ACKed

        gw_c.expect_exit = True
        gw_c.proc.send_signal(signal.SIGTERM)
        for c in (cb, cc):
            code, _ = await expect_close(c.ws)
            self.assertEqual(code, 1001, c)
        rc = await asyncio.get_running_loop().run_in_executor(
            None, gw_c.wait_exit)
        self.assertEqual(rc, 0, gw_c.stderr_text())
        gw_c.check_sanitizers()

        # The push bob did not ACK went to his inbox; alice is told.
        st = await ca.status(a.msg_id)
        self.assertEqual((st.state, st.user_id),
                         (pb().DeliveryStatus.STORED, bob), st)
        await self.on(gw_b, bob)
        p = self.wait_inbox(gw_b, bob, [a.msg_id])
        self.assertEqual(ids(p), [a.msg_id])
        # The others keep going.
        self.assertEqual(
            (await self.stored_send(ca, to=carol, body=b"later")).seq, 1)


def main():
    cluster.require_env()
    imctest.main()


if __name__ == "__main__":
    main()

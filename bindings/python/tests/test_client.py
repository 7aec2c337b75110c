"""imchat.Client against a real imchatd: messages both ways, delivery
statuses, the offline sync after a reconnect, groups, history, refusals,
reconnecting to a restarted server, and the threading rules."""

import http.client
import os
import shutil
import socket
import tempfile
import threading
import unittest

import support
from support import IO_TIMEOUT, address, token

import imchat
from imchat import DeliveryState, State, errors

ADMIN = "py-admin-token"


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = support.start_server("--admin-token", ADMIN)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()  # exits 0, no sanitizer report

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="imc-py-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def client(self, user, store=None, **kw):
        c = imchat.Client(address(self.server), token(self.server, user),
                          store=store or ":memory:", **kw)
        self.addCleanup(c.close)
        return c

    def online(self, user, **kw):
        c = self.client(user, **kw)
        c.connect(IO_TIMEOUT)
        return c

    def admin(self, method, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port,
                                          timeout=IO_TIMEOUT)
        try:
            conn.request(method, path,
                         headers={"Authorization": "Bearer " + ADMIN})
            r = conn.getresponse()
            r.read()
            self.assertLess(r.status, 300, "%s %s: %d" % (method, path,
                                                          r.status))
        finally:
            conn.close()

    # -- 1:1 -----------------------------------------------------------------

    def test_two_users_exchange_messages_and_statuses(self):
        alice = self.online("alice1")
        bob = self.online("bob1")
        self.assertEqual(alice.state, State.ONLINE)
        self.assertEqual(alice.user_id, "alice1")

        cmid = alice.send("bob1", "hello bob")
        self.assertEqual(len(cmid), 32)
        msg = next(bob.messages(timeout=IO_TIMEOUT))
        self.assertEqual((msg.from_user, msg.to_user, msg.text),
                         ("alice1", "bob1", "hello bob"))
        self.assertEqual(msg.conversation_id, "p:alice1:bob1")
        self.assertEqual(msg.client_msg_id, cmid)
        self.assertEqual(msg.content_type, "text/plain")
        self.assertEqual(msg.seq, 1)
        self.assertFalse(msg.offline)

        st = alice.wait_status(cmid, IO_TIMEOUT)
        self.assertEqual(st.state, DeliveryState.DELIVERED)
        self.assertEqual((st.user_id, st.msg_id), ("bob1", msg.msg_id))
        self.assertEqual(alice.outbox_size, 0)

        body = bytes(range(256))
        cmid2 = bob.send("alice1", body, content_type="application/x-test")
        back = next(alice.messages(timeout=IO_TIMEOUT))
        self.assertEqual((back.body, back.content_type, back.seq),
                         (body, "application/x-test", 2))
        self.assertEqual(bob.wait_status(cmid2, IO_TIMEOUT).state,
                         DeliveryState.DELIVERED)

    def test_offline_message_is_synced_after_reconnect(self):
        store = os.path.join(self.tmp, "carol.db")
        alice = self.online("alice2")
        carol = self.online("carol2", store=store)
        carol.close()

        sent = [alice.send("carol2", "while away %d" % i) for i in range(5)]
        for cmid in sent:
            self.assertEqual(alice.wait_status(cmid, IO_TIMEOUT).state,
                             DeliveryState.STORED)

        # Pages of 2: the sync runs three requests.
        carol = self.client("carol2", store=store, page_limit=2)
        carol.connect(IO_TIMEOUT)
        got = [m for _, m in zip(sent, carol.messages(timeout=IO_TIMEOUT))]
        self.assertEqual([m.text for m in got],
                         ["while away %d" % i for i in range(5)])
        self.assertTrue(all(m.offline for m in got))
        self.assertEqual([m.client_msg_id for m in got], sent)
        self.assertTrue(carol.run_until(lambda: not carol.sync_pending,
                                        IO_TIMEOUT))
        carol.close()

        # The store keeps the cursor and the seen ids: nothing comes twice.
        carol = self.online("carol2", store=store)
        self.assertTrue(carol.run_until(lambda: not carol.sync_pending,
                                        IO_TIMEOUT))
        self.assertEqual(list(carol.messages(timeout=0)), [])

    def test_history(self):
        # History is plain HTTP: alice needs no WebSocket to read it.
        alice = self.client("alice3")
        bob = self.online("bob3")
        for i in range(3):
            self.assertEqual(bob.wait_status(bob.send("alice3", "h%d" % i),
                                             IO_TIMEOUT).state,
                             DeliveryState.STORED)
        pages = alice.history("p:alice3:bob3")
        self.assertEqual([(m.seq, m.text) for m in pages],
                         [(1, "h0"), (2, "h1"), (3, "h2")])
        self.assertTrue(all(m.history for m in pages))
        self.assertEqual([m.seq for m in alice.history("p:alice3:bob3", 2)],
                         [3])
        with self.assertRaises(errors.Forbidden):
            self.online("eve3").history("p:alice3:bob3")
        with self.assertRaises(errors.InvalidArgument):
            alice.history("not a conversation")

        # Gap repair feeds the inbox, through the store's dedup.
        alice.repair_gap("p:alice3:bob3", 1)
        self.assertEqual([(m.seq, m.text, m.history)
                          for m in alice.messages(timeout=0)],
                         [(2, "h1", True), (3, "h2", True)])
        alice.repair_gap("p:alice3:bob3", 0)
        self.assertEqual([m.seq for m in alice.messages(timeout=0)], [1])

    # -- groups and refusals --------------------------------------------------

    def test_group_message_and_refusal(self):
        self.admin("PUT", "/v1/groups/team4/members/alice4")
        self.admin("PUT", "/v1/groups/team4/members/bob4")
        alice = self.online("alice4")
        bob = self.online("bob4")
        cmid = alice.send(group="team4", body="hi team")
        msg = next(bob.messages(timeout=IO_TIMEOUT))
        self.assertEqual((msg.group_id, msg.to_user, msg.text),
                         ("team4", "", "hi team"))
        self.assertEqual(msg.conversation_id, "g:team4")
        st = alice.wait_status(cmid, IO_TIMEOUT)
        self.assertEqual((st.state, st.user_id), (DeliveryState.STORED, ""))

        eve = self.online("eve4")
        cmid = eve.send(group="team4", body="let me in")
        with self.assertRaises(errors.Forbidden) as cm:
            eve.wait_status(cmid, IO_TIMEOUT)
        self.assertEqual(cm.exception.client_msg_id, cmid)
        self.assertEqual(eve.outbox_size, 0)

    def test_statuses_iterator(self):
        alice = self.online("alice10")
        sent = [alice.send("bob10", "s%d" % i) for i in range(2)]
        sent.append(alice.send(group="nobody10", body="anyone?"))
        got = {o.client_msg_id: o for _, o in
               zip(sent, alice.statuses(timeout=IO_TIMEOUT))}
        self.assertEqual(set(got), set(sent))
        for cmid in sent[:2]:
            self.assertEqual((got[cmid].state, got[cmid].user_id),
                             (DeliveryState.STORED, "bob10"))
        self.assertIsInstance(got[sent[2]], imchat.Refused)
        self.assertIsInstance(got[sent[2]].error, errors.Forbidden)

    def test_bad_arguments(self):
        alice = self.client("alice5")
        with self.assertRaises(errors.InvalidArgument):
            alice.send("bob5", "x", group="g")
        with self.assertRaises(errors.InvalidArgument):
            alice.send(body="x")
        with self.assertRaises(errors.InvalidArgument):
            alice.send("not valid!", "x")
        with self.assertRaises(errors.InvalidArgument):
            alice.send("bob5\0eve", "x")
        with self.assertRaises(errors.InvalidArgument):
            imchat.Client("no-port", "t")
        with self.assertRaises(errors.InvalidArgument):
            imchat.Client(address(self.server), "")  # no token
        with self.assertRaises(errors.Io):
            imchat.Client(address(self.server), "t",
                          store=os.path.join(self.tmp, "no", "such.db"))
        alice.close()
        alice.close()  # idempotent
        with self.assertRaises(errors.Closed):
            alice.send("bob5", "x")

    def test_no_server(self):
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        states = []
        c = imchat.Client("127.0.0.1:%d" % port, "t", backoff_ms=(10, 20),
                          on_state=lambda s, e: states.append((s, e)))
        self.addCleanup(c.close)
        with self.assertRaises(TimeoutError):
            c.connect(0.5)
        waits = [e for s, e in states if s == State.WAITING]
        self.assertTrue(waits)
        self.assertTrue(all(isinstance(e, errors.Io) for e in waits), waits)
        # It tried again after the backoff.
        self.assertGreater(len([s for s, _ in states
                                if s == State.CONNECTING]), 1)

    def test_refused_token(self):
        states = []
        c = imchat.Client(address(self.server),
                          imchat.sign_token("wrong-secret", "mallory"),
                          on_state=lambda s, e: states.append((s, e)))
        self.addCleanup(c.close)
        with self.assertRaises(errors.Auth):
            c.connect(IO_TIMEOUT)
        self.assertEqual(c.state, State.FAILED)
        self.assertEqual(states[-1][0], State.FAILED)
        self.assertIsInstance(states[-1][1], errors.Auth)
        with self.assertRaises(errors.Closed):
            c.start()

    # -- callbacks ------------------------------------------------------------

    def test_callbacks(self):
        got, statuses, acks, states, refusals = [], [], [], [], []
        bob = self.online("bob6")

        def on_message(msg):
            got.append(msg)
            cmid = alice.send(msg.from_user, "re: " + msg.text)  # allowed
            self.assertEqual(len(cmid), 32)

        alice = self.client("alice6", on_message=on_message,
                            on_status=statuses.append, on_ack=acks.append,
                            on_refused=refusals.append,
                            on_state=lambda s, e: states.append(s))
        alice.connect(IO_TIMEOUT)
        self.assertEqual(states[:3], [State.CONNECTING, State.HANDSHAKE,
                                      State.ONLINE])
        with self.assertRaises(RuntimeError):
            next(alice.messages())  # on_message replaces the queue
        with self.assertRaises(RuntimeError):
            next(alice.statuses())  # and on_status that of statuses

        cmid = alice.send(group="closed6", body="knock knock")
        self.assertTrue(alice.run_until(lambda: refusals, IO_TIMEOUT))
        self.assertEqual(refusals[0].client_msg_id, cmid)
        self.assertIsInstance(refusals[0].error, errors.Forbidden)

        cmid = alice.send("bob6", "ping")
        self.assertEqual(next(bob.messages(timeout=IO_TIMEOUT)).text, "ping")
        self.assertTrue(alice.run_until(lambda: statuses, IO_TIMEOUT))
        self.assertEqual((statuses[0].client_msg_id, statuses[0].state),
                         (cmid, DeliveryState.DELIVERED))
        self.assertEqual(acks[0].client_msg_id, cmid)
        self.assertEqual(acks[0].conversation_id, "p:alice6:bob6")

        bob.send("alice6", "pong")
        self.assertTrue(alice.run_until(lambda: got, IO_TIMEOUT))
        self.assertEqual(got[0].text, "pong")
        self.assertEqual(next(bob.messages(timeout=IO_TIMEOUT)).text,
                         "re: pong")

    def test_callback_exception_is_raised_by_the_driving_call(self):
        class Boom(Exception):
            pass

        def on_message(msg):
            raise Boom(msg.text)

        alice = self.client("alice7", on_message=on_message)
        alice.connect(IO_TIMEOUT)
        bob = self.online("bob7")
        bob.send("alice7", "kaboom")
        with self.assertRaises(Boom) as cm:
            alice.run_until(lambda: False, IO_TIMEOUT)
        self.assertEqual(str(cm.exception), "kaboom")
        self.assertEqual(alice.state, State.ONLINE)  # the client goes on

    def test_one_thread_at_a_time(self):
        errs = []

        def on_message(msg):
            # Another thread while this one drives the client: refused.
            def other():
                try:
                    alice.send("bob8", "from another thread")
                except RuntimeError as e:
                    errs.append(e)
            t = threading.Thread(target=other)
            t.start()
            t.join()
            # And close() inside a callback is refused too.
            try:
                alice.close()
            except RuntimeError as e:
                errs.append(e)

        alice = self.client("alice8", on_message=on_message)
        alice.connect(IO_TIMEOUT)
        bob = self.online("bob8")
        bob.send("alice8", "hi")
        self.assertTrue(alice.run_until(lambda: len(errs) == 2, IO_TIMEOUT))
        self.assertIn("another thread", str(errs[0]))
        self.assertIn("callback", str(errs[1]))
        self.assertEqual(alice.state, State.ONLINE)

        # Handing the client to another thread is fine.
        out = []
        t = threading.Thread(target=lambda: out.append(alice.send("bob8",
                                                                  "moved")))
        t.start()
        t.join()
        self.assertEqual(len(out), 1)
        self.assertEqual(next(bob.messages(timeout=IO_TIMEOUT)).text, "moved")


class ReconnectTest(unittest.TestCase):
    def test_reconnects_to_a_restarted_server_and_flushes_the_outbox(self):
        first = support.start_server()
        port, data = first.port, first.data_dir
        alice = imchat.Client(address(first), token(first, "alice9"),
                              backoff_ms=(50, 200))
        alice.connect(IO_TIMEOUT)
        # The server closes with 1001 and waits for the client's answer:
        # the client is driven while it stops.
        stopped = []
        t = threading.Thread(target=lambda: stopped.append(first.stop()))
        t.start()
        self.assertTrue(alice.run_until(
            lambda: alice.state in (State.WAITING, State.CONNECTING),
            IO_TIMEOUT))
        t.join()
        self.assertEqual(stopped, [None])  # stop() returned: exit status 0

        cmid = alice.send("bob9", "sent while the server was down")
        self.assertEqual(alice.outbox_size, 1)
        second = support.imctest.Server("--listen", "127.0.0.1:%d" % port,
                                        data_dir=data).start()
        self.addCleanup(second.stop)
        self.addCleanup(alice.close)  # cleanups run last-in first-out
        self.assertEqual(second.port, port)
        self.assertEqual(alice.wait_status(cmid, IO_TIMEOUT).state,
                         DeliveryState.STORED)
        self.assertEqual(alice.state, State.ONLINE)
        self.assertEqual(alice.outbox_size, 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)

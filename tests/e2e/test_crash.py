#!/usr/bin/python3
"""End-to-end: imchatd killed with SIGKILL under load, restarted, and every
unconfirmed message resent with the same client_msg_id (SPEC 3.1: the
server deduplicates on (from_user, client_msg_id); nothing accepted is lost
when a process dies).

Several senders pipeline hundreds of messages to offline recipients; the
server is killed (kill -9) while many are in flight, at a different point
in each round, then restarted on the same data directory. After the last
round the test proves:
  - nothing acknowledged (SendAck) is lost: it is in the recipient's
    /offline inbox;
  - no client_msg_id ever got two msg_ids, nor a message two inbox entries
    or two seqs (the recipient never sees a message twice);
  - a resend of an acknowledged message gets its original msg_id and seq;
  - no send is refused (no UNAVAILABLE for a claim left "pending" by the
    dead process, no other Error).

Run: IMCHATD=build/hosts/imchatd IMC_PROTO_DIR=proto/imchat/v1 \
     /usr/bin/python3 tests/e2e/test_crash.py
"""

import asyncio
import os
import signal
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imctest  # noqa: E402
from imctest import IO_TIMEOUT, send_frame, sign_hs256, welcome  # noqa: E402

import websockets.exceptions  # noqa: E402

SENDERS = ["s0", "s1", "s2", "s3"]
RECIPIENTS = ["r0", "r1"]  # never connected: everything goes to /offline
PER_SENDER = 150
# The kill -9 of a round comes once the senders, interleaved and reading
# answers as they come, have sent this share of the round's unconfirmed
# messages: some are acknowledged, some are in the server's hands, the
# rest unsent. The last round runs to the end.
KILL_AT = [0.6, 0.5, 0.7]
WINDOW = 60  # unanswered sends per sender: 240 in flight in all
BOUND_S = 60.0
NO_LIMITS = ["--rate-limit", "1000000", "--rate-burst", "1000000",
             "--user-rate-limit", "1000000", "--user-rate-burst", "1000000"]


def pb():
    return imctest.pb()


def token(user):
    now = int(time.time())
    return sign_hs256({"sub": user, "iat": now, "exp": now + 600})


def offline_all(srv, user):
    """Every message of user's inbox, oldest first."""
    msgs, cursor = [], 0
    while True:
        r = imctest.http_get(srv.port, "/offline?cursor=%d&limit=1000"
                             % cursor,
                             headers={"Authorization": "Bearer "
                                      + token(user)})
        if r.status != 200:
            raise AssertionError("GET /offline as %s: %r" % (user, r))
        page = r.json()
        msgs += page["messages"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return msgs


class Round:
    """One life of the server: every sender sends, pipelined, everything
    it has (unconfirmed messages and, to check their answers, confirmed
    ones), and reads the answers."""

    def __init__(self, test, srv, acked, kill_after):
        self.test = test
        self.srv = srv
        self.acked = acked  # (user, cmid) -> (msg_id, seq, conversation)
        self.kill_after = kill_after
        self.new_acks = 0
        self.sent = 0
        self.errors = []
        self.killed = False

    def answer(self, user, cmid, frame):
        kind = frame.WhichOneof("body")
        if kind != "send_ack":
            self.errors.append((user, cmid, str(frame).replace("\n", " ")))
            return
        a = frame.send_ack
        got = (a.msg_id, a.seq, a.conversation_id)
        first = self.acked.setdefault((user, cmid), got)
        if first is got:
            self.new_acks += 1
        elif first != got:
            self.errors.append((user, cmid, "acknowledged as %r, then as %r"
                                % (first, got)))

    def count_sent(self):
        self.sent += 1
        if (self.kill_after is not None and not self.killed
                and self.sent >= self.kill_after):
            self.killed = True
            self.srv.proc.send_signal(signal.SIGKILL)

    async def reader(self, user, ws, pending, answered):
        while pending:
            raw = await asyncio.wait_for(ws.recv(), IO_TIMEOUT)
            fr = pb().ServerFrame()
            fr.ParseFromString(raw)
            if fr.id in pending:
                self.answer(user, pending.pop(fr.id), fr)
                answered.set()

    async def sender(self, user, order):
        async with self.srv.connect(token=token(user)) as ws:
            await welcome(ws)
            pending = {fid: cmid for fid, (cmid, _) in
                       enumerate(order, start=1)}
            answered = asyncio.Event()
            reading = asyncio.ensure_future(
                self.reader(user, ws, pending, answered))
            try:
                for fid, (cmid, to) in enumerate(order, start=1):
                    # A bounded window, as a client keeps: the server always
                    # has WINDOW of this sender's messages in hand.
                    while (len(pending) - (len(order) - fid + 1) >= WINDOW
                           and not reading.done()):
                        answered.clear()
                        await asyncio.wait([reading, asyncio.ensure_future(
                            answered.wait())], timeout=IO_TIMEOUT,
                            return_when=asyncio.FIRST_COMPLETED)
                    if reading.done():
                        reading.result()  # raises what ended the reader
                    f = pb().ClientFrame(id=fid)
                    f.send.client_msg_id = cmid
                    f.send.user_id = to
                    f.send.body = ("%s from %s" % (cmid, user)).encode()
                    f.send.content_type = "text/plain"
                    await send_frame(ws, f)
                    self.count_sent()
                await reading
            except (websockets.exceptions.ConnectionClosed, OSError):
                if not self.killed:
                    raise
            finally:
                reading.cancel()
                try:
                    await reading
                except (asyncio.CancelledError,
                        websockets.exceptions.ConnectionClosed, OSError):
                    pass

    async def run(self, plan):
        await asyncio.gather(*(self.sender(u, plan[u]) for u in SENDERS))


class TestCrashUnderLoad(imctest.AsyncTestCase):

    async def test_kill9_rounds_resend_unconfirmed(self):
        t0 = time.monotonic()
        all_msgs = {u: [("%s-%03d" % (u, k), RECIPIENTS[k % 2])
                        for k in range(PER_SENDER)] for u in SENDERS}
        acked = {}
        acked_before_kills = 0
        data_dir = None
        srv = None
        for rnd in range(len(KILL_AT) + 1):
            unconfirmed = sum(1 for u in SENDERS for m in all_msgs[u]
                              if (u, m[0]) not in acked)
            kill_after = None
            if rnd < len(KILL_AT):
                kill_after = max(1, int(unconfirmed * KILL_AT[rnd]))
            print("round %d: %d unconfirmed" % (rnd, unconfirmed),
                  file=sys.stderr)
            srv = imctest.Server(*NO_LIMITS, data_dir=data_dir,
                                 name="imchatd (round %d)" % rnd)
            srv.start()
            data_dir = srv.data_dir
            # Unconfirmed first, so the kill lands among new messages;
            # then the confirmed ones again, whose answers must not
            # change.
            plan = {}
            for u in SENDERS:
                todo = [m for m in all_msgs[u] if (u, m[0]) not in acked]
                again = [m for m in all_msgs[u] if (u, m[0]) in acked]
                plan[u] = todo + again
            r = Round(self, srv, acked, kill_after)
            await r.run(plan)
            self.assertEqual(r.errors, [], "round %d: sends refused or "
                             "answered differently" % rnd)
            if kill_after is not None:
                self.assertTrue(r.killed, "round %d ended before %d sends"
                                % (rnd, kill_after))
                acked_before_kills += r.new_acks
                srv.proc.wait(IO_TIMEOUT)
                self.assertEqual(srv.proc.returncode, -signal.SIGKILL)
                left = sum(1 for u in SENDERS for m in all_msgs[u]
                           if (u, m[0]) not in acked)
                self.assertGreater(left, 0, "round %d: nothing was in "
                                   "flight at the kill" % rnd)

        self.assertGreater(acked_before_kills, 0, "no SendAck came before "
                           "a kill: nothing acknowledged was put at risk")
        # Every message is acknowledged now, each with one answer.
        self.assertEqual(len(acked), len(SENDERS) * PER_SENDER)

        # Nothing acknowledged is lost, and nothing is there twice.
        want = {}
        for (u, cmid), (msg_id, seq, conv) in acked.items():
            to = RECIPIENTS[int(cmid.rsplit("-", 1)[1]) % 2]
            want.setdefault(to, {})[msg_id] = (u, cmid, seq, conv)
        deadline = time.monotonic() + IO_TIMEOUT
        for to in RECIPIENTS:
            while True:
                inbox = offline_all(srv, to)
                if len(inbox) >= len(want[to]) or \
                        time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            ids = [m["msg_id"] for m in inbox]
            self.assertEqual(len(ids), len(set(ids)),
                             "%s got a message twice" % to)
            per_cmid = {}
            seqs = {}
            for m in inbox:
                per_cmid.setdefault((m["from_user"], m["client_msg_id"]),
                                    set()).add(m["msg_id"])
                seqs.setdefault(m["conversation_id"], []).append(m["seq"])
            twice = {k: v for k, v in per_cmid.items() if len(v) > 1}
            self.assertEqual(twice, {}, "%s: client_msg_ids stored as "
                             "several messages" % to)
            missing = set(want[to]) - set(ids)
            self.assertEqual(missing, set(), "%s: acknowledged but not in "
                             "the inbox" % to)
            extra = set(ids) - set(want[to])
            self.assertEqual(extra, set(), "%s: stored under msg_ids no "
                             "SendAck gave" % to)
            for m in inbox:
                u, cmid, seq, conv = want[to][m["msg_id"]]
                self.assertEqual((m["seq"], m["conversation_id"]),
                                 (seq, conv), m)
            for conv, s in seqs.items():
                self.assertEqual(len(s), len(set(s)),
                                 "%s: a seq given twice" % conv)
        srv.stop()
        self.assertLess(time.monotonic() - t0, BOUND_S)


if __name__ == "__main__":
    imctest.main()

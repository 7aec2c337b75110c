#!/usr/bin/python3
"""End-to-end, with counts: no message lost across two kill -9s of imchatd.

Four senders send IMC_NOLOSS_MESSAGES (default 50,000) messages in all,
pipelined, to two recipients who stay connected (they ACK every push and
reconnect after each restart) and two who are offline throughout. imchatd
is killed with SIGKILL twice while messages are in flight and restarted on
the same data directory; each sender then resends, with the same
client_msg_id, every message it has no final DeliveryStatus for, as a
client does. A resend of a message whose push and status were in flight
when the server died makes the restarted router deliver it again (push
or inbox). At the end every recipient reads its /offline inbox too, and
the test proves:
  - every sent message got a SendAck, and no client_msg_id two msg_ids;
  - every acknowledged message ended with a final status (DELIVERED or
    STORED) at its sender, and is in the conversation's history;
  - every acknowledged message reached its recipient, pushed or through
    /offline, exactly once after the client's dedup by msg_id, with the
    msg_id and seq of its SendAck;
  - no seq was given twice in a conversation (a counter that went back
    after a restart would give one again);
  - nothing arrived that was not sent.
It prints sent / acknowledged / DELIVERED / STORED / received /
duplicates removed.

Run: IMCHATD=build/hosts/imchatd IMC_PROTO_DIR=proto/imchat/v1 \
     /usr/bin/python3 tests/e2e/test_noloss.py
"""

import asyncio
import os
import signal
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imctest  # noqa: E402
from imctest import IO_TIMEOUT, send_frame, welcome  # noqa: E402
from test_crash import NO_LIMITS, offline_all, token  # noqa: E402

import websockets.exceptions  # noqa: E402

TOTAL = int(os.environ.get("IMC_NOLOSS_MESSAGES", "50000"))
SENDERS = ["ns0", "ns1", "ns2", "ns3"]
ONLINE = ["non0", "non1"]
OFFLINE = ["noff0", "noff1"]
RECIPIENTS = ONLINE + OFFLINE
KILLS = [1 / 3, 2 / 3]  # of the first pass's sends
WINDOW = 200  # unanswered sends per sender
BOUND_S = 600.0
CLOSED = (websockets.exceptions.WebSocketException, OSError,
          asyncio.TimeoutError)


async def wait_either(task, event, timeout):
    """Until task ends, event is set or timeout passes."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([task, waiter], timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


def pb():
    return imctest.pb()


def history_all(srv, user, conv):
    """Every message of conversation conv, as user reads it."""
    msgs, after = [], 0
    while True:
        r = imctest.http_get(srv.port, "/v1/conversations/%s/messages?"
                             "after_seq=%d&limit=1000" % (conv, after),
                             headers={"Authorization": "Bearer "
                                      + token(user)})
        if r.status != 200:
            raise AssertionError("history of %s as %s: %r" % (conv, user, r))
        page = r.json()["messages"]
        msgs += page
        if len(page) < 1000:
            return msgs
        after = page[-1]["seq"]


class Life:
    """One run of imchatd: everyone connects, senders send what has no
    final status yet, recipients ACK what is pushed."""

    def __init__(self, test, srv, kill_at):
        self.t = test
        self.srv = srv
        self.kill_at = kill_at  # sends in this life before the kill
        self.sent = 0
        self.killed = False
        self.senders_done = 0

    def count_send(self):
        self.sent += 1
        self.t.sent += 1
        if self.kill_at is not None and not self.killed and \
                self.sent >= self.kill_at:
            self.killed = True
            self.srv.proc.send_signal(signal.SIGKILL)

    def on_frame(self, user, fr, pending):
        kind = fr.WhichOneof("body")
        t = self.t
        if fr.id and fr.id in pending:
            cmid = pending.pop(fr.id)
            if kind != "send_ack":
                t.errors.append((user, cmid, str(fr).replace("\n", " ")))
                return
            a = fr.send_ack
            got = (a.msg_id, a.seq, a.conversation_id)
            first = t.acked.setdefault((user, cmid), got)
            if first != got:
                t.errors.append((user, cmid, "acknowledged as %r, then %r"
                                 % (first, got)))
            t.by_msg_id[a.msg_id] = (user, cmid)
        elif kind == "status":
            st = fr.status
            t.final[(user, st.client_msg_id)] = st.state

    async def sender(self, user):
        try:
            await self.send_all(user)
        finally:
            self.senders_done += 1

    async def send_all(self, user):
        t = self.t
        todo = [(cmid, to) for cmid, to in t.plan[user]
                if (user, cmid) not in t.final]
        if not todo:
            return
        async with self.srv.connect(token=token(user)) as ws:
            await welcome(ws)
            pending = {}
            fid = 0
            done = asyncio.Event()

            last_rx = [time.monotonic()]

            async def reader():
                while True:
                    raw = await ws.recv()  # ends when the server goes
                    last_rx[0] = time.monotonic()
                    fr = pb().ServerFrame()
                    fr.ParseFromString(raw)
                    self.on_frame(user, fr, pending)
                    done.set()

            reading = asyncio.ensure_future(reader())
            try:
                for cmid, to in todo:
                    while len(pending) >= WINDOW and not reading.done():
                        done.clear()
                        await wait_either(reading, done, IO_TIMEOUT)
                    if reading.done():
                        reading.result()
                    fid += 1
                    pending[fid] = cmid
                    f = pb().ClientFrame(id=fid)
                    f.send.client_msg_id = cmid
                    f.send.user_id = to
                    f.send.body = ("%s %s" % (user, cmid)).encode()
                    f.send.content_type = "text/plain"
                    await send_frame(ws, f)
                    self.count_send()
                # Every answer, then the statuses still to come (a status
                # the crash took does not come: 3 s of quiet ends it).
                deadline = time.monotonic() + 3 * IO_TIMEOUT
                while time.monotonic() < deadline and not reading.done():
                    if not pending and (
                            all((user, c) in t.final for c, _ in todo) or
                            time.monotonic() - last_rx[0] > 3.0):
                        break
                    done.clear()
                    await wait_either(reading, done, 1.0)
                if reading.done():
                    reading.result()
            except CLOSED:
                if not self.killed:
                    raise
            finally:
                reading.cancel()
                try:
                    await reading
                except (asyncio.CancelledError,) + CLOSED:
                    pass

    async def recipient(self, user):
        """Reads and ACKs pushes until the senders are done (or the
        server dies), then a little longer for the last ones."""
        t = self.t
        try:
            async with self.srv.connect(token=token(user)) as ws:
                await welcome(ws)
                quiet_since = None
                while True:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 0.5)
                    except asyncio.TimeoutError:
                        if self.senders_done == len(SENDERS):
                            quiet_since = quiet_since or time.monotonic()
                            if time.monotonic() - quiet_since > 1.0:
                                return
                        continue
                    quiet_since = None
                    fr = pb().ServerFrame()
                    fr.ParseFromString(raw)
                    if fr.WhichOneof("body") != "deliver":
                        continue
                    m = fr.deliver.message
                    t.pushed.setdefault(user, []).append(
                        (m.msg_id, m.seq, m.conversation_id))
                    ack = pb().ClientFrame(id=0)
                    ack.deliver_ack.msg_ids.append(m.msg_id)
                    await send_frame(ws, ack)
        except CLOSED:
            if not self.killed:
                raise

    async def run(self):
        await asyncio.gather(*(self.recipient(u) for u in ONLINE),
                             *(self.sender(u) for u in SENDERS))


class TestNoLoss(imctest.AsyncTestCase):

    async def test_counts_across_two_kill9(self):
        t0 = time.monotonic()
        n = TOTAL // len(SENDERS)
        self.plan = {u: [("m%06d" % k, RECIPIENTS[(k + i) % len(RECIPIENTS)])
                         for k in range(n)]
                     for i, u in enumerate(SENDERS)}
        self.acked, self.final, self.by_msg_id = {}, {}, {}
        self.pushed, self.errors = {}, []
        self.sent = 0
        total = n * len(SENDERS)
        data_dir, srv = None, None
        kills = [int(total * k) - (int(total * KILLS[i - 1]) if i else 0)
                 for i, k in enumerate(KILLS)]
        for life in range(len(kills) + 1):
            srv = imctest.Server(*NO_LIMITS, data_dir=data_dir,
                                 name="imchatd (life %d)" % life)
            srv.start()
            data_dir = srv.data_dir
            kill_at = kills[life] if life < len(kills) else None
            lf = Life(self, srv, kill_at)
            await lf.run()
            self.assertEqual(self.errors, [], "life %d: sends refused or "
                             "answered differently" % life)
            if kill_at is not None:
                self.assertTrue(lf.killed, "life %d ended before its kill"
                                % life)
                srv.proc.wait(IO_TIMEOUT)
                self.assertEqual(srv.proc.returncode, -signal.SIGKILL)
        # The last life runs until every message has its final status.
        missing = [(u, c) for u in SENDERS for c, _ in self.plan[u]
                   if (u, c) not in self.acked]
        self.assertEqual(missing[:10], [], "%d sends never acknowledged"
                         % len(missing))

        # What each recipient has: pushes, then the inbox, by msg_id.
        want = {}
        for (u, cmid), (msg_id, seq, conv) in self.acked.items():
            want[msg_id] = (u, cmid, seq, conv)
        to_of = {(u, c): to for u in SENDERS for c, to in self.plan[u]}
        received, dups = {}, 0
        for r in RECIPIENTS:
            got = list(self.pushed.get(r, []))
            deadline = time.monotonic() + IO_TIMEOUT
            expect = sum(1 for k, v in self.acked.items() if to_of[k] == r)
            while True:
                inbox = offline_all(srv, r)
                have = {m for m, _, _ in got} | {m["msg_id"] for m in inbox}
                if len(have) >= expect or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            got += [(m["msg_id"], m["seq"], m["conversation_id"])
                    for m in inbox]
            for msg_id, seq, conv in got:
                if msg_id in received:
                    dups += 1
                    self.assertEqual(received[msg_id], (r, seq, conv),
                                     "%s arrived differently" % msg_id)
                else:
                    received[msg_id] = (r, seq, conv)
        # Every acknowledged message has its final status: one whose
        # push and status were in flight when the server died was
        # delivered again by the resend's router. And it reached its
        # recipient.
        unconfirmed = [m for m, k in want.items() if k[:2] not in self.final]
        self.assertEqual(unconfirmed[:10], [], "%d acknowledged messages "
                         "without a final status" % len(unconfirmed))
        lost = [m for m in want if m not in received]
        self.assertEqual(lost[:10], [], "%d acknowledged messages never "
                         "reached their recipient" % len(lost))
        in_history = set()
        for conv in {k[3] for k in want.values()}:
            reader = [u for u in conv.split(":")[1:] if u in RECIPIENTS][0]
            in_history |= {h["msg_id"] for h in history_all(srv, reader,
                                                            conv)}
        gone = [m for m in want if m not in in_history]
        self.assertEqual(gone[:10], [], "%d acknowledged messages not in "
                         "the history" % len(gone))
        extra = [m for m in received if m not in want]
        self.assertEqual(extra[:10], [], "%d messages never acknowledged "
                         "arrived" % len(extra))
        seqs = {}
        for msg_id, (r, seq, conv) in received.items():
            u, cmid, aseq, aconv = want[msg_id]
            self.assertEqual((r, seq, conv), (to_of[(u, cmid)], aseq, aconv),
                             msg_id)
            seqs.setdefault(conv, {}).setdefault(seq, set()).add(msg_id)
        # Every acknowledged message arrived, so a counter that went back
        # after a restart would show as a seq given twice.
        reused = [(c, s) for c, d in seqs.items() for s, m in d.items()
                  if len(m) > 1]
        self.assertEqual(reused, [], "a seq given to several messages")
        states = list(self.final.values())
        counts = (self.sent, len(self.acked),
                  states.count(pb().DeliveryStatus.DELIVERED),
                  states.count(pb().DeliveryStatus.STORED),
                  len(received), dups)
        print("no-loss: sent %d (resends included), acknowledged %d, "
              "DELIVERED %d, STORED %d, received %d, duplicates removed "
              "%d" % counts, file=sys.stderr)
        self.assertEqual(len(received), total)
        srv.stop()
        self.assertLess(time.monotonic() - t0, BOUND_S)


if __name__ == "__main__":
    imctest.main()

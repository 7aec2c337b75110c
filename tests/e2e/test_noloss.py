#!/usr/bin/python3
"""End-to-end, with counts: no message lost across two kill -9s of imchatd.

Four senders send IMC_NOLOSS_MESSAGES (default 50,000) messages in all,
pipelined, to two recipients who stay connected (they ACK every push and
reconnect after each restart) and two who are offline throughout. imchatd
is killed with SIGKILL twice while messages are in flight and restarted on
the same data directory; each sender then resends, with the same
client_msg_id, every message it has no final DeliveryStatus for, as a
client does; a resend of a message whose push and status were in flight
when the server died makes the restarted router deliver it again. At the
end every recipient reads its /offline inbox too, and the test proves
what noloss.py lists, with every acknowledged message confirmed by its
final status (nothing confirmed lost, nothing
twice after dedup, no seq reused or going back, nothing unsent arrived).
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
from noloss import Ledger, history_all, wait_either  # noqa: E402
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


def pb():
    return imctest.pb()


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

    def count_send(self, user, cmid):
        self.sent += 1
        self.t.books.count_send(user, cmid)
        if self.kill_at is not None and not self.killed and \
                self.sent >= self.kill_at:
            self.killed = True
            self.srv.proc.send_signal(signal.SIGKILL)

    def on_frame(self, user, fr, pending):
        if fr.id and fr.id in pending:
            self.t.books.on_answer(user, pending.pop(fr.id), fr)
        elif fr.WhichOneof("body") == "status":
            self.t.books.on_status(user, fr.status)

    async def sender(self, user):
        try:
            await self.send_all(user)
        finally:
            self.senders_done += 1

    async def send_all(self, user):
        t = self.t.books
        todo = t.unfinished(user)
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
                    self.count_send(user, cmid)
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
        t = self.t.books
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
                    t.on_push(user, m)
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
        self.books = Ledger(SENDERS, RECIPIENTS, TOTAL)
        total = self.books.total
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
            self.assertEqual(self.books.errors, [], "life %d: sends refused "
                             "or answered differently" % life)
            if kill_at is not None:
                self.assertTrue(lf.killed, "life %d ended before its kill"
                                % life)
                srv.proc.wait(IO_TIMEOUT)
                self.assertEqual(srv.proc.returncode, -signal.SIGKILL)
        # The last life runs until every message has its final status.
        await self.books.verify(
            self, lambda u: offline_all(srv, u),
            lambda u, conv: history_all(srv, u, conv, token),
            every_status=True)
        srv.stop()
        self.assertLess(time.monotonic() - t0, BOUND_S)


if __name__ == "__main__":
    imctest.main()

"""The books of the no-loss tests (test_noloss.py on imchatd,
test_cluster_noloss.py on the cluster): which messages each sender has
to send, what the server answered and told it, what each recipient got,
and the final check of them all.

A message is (sender, client_msg_id) to one recipient. The check proves:
  - every message whose sender saw DELIVERED or STORED reached its
    recipient, pushed or through /offline, exactly once after the
    client's dedup by msg_id, with the msg_id and seq of its SendAck;
  - every other acknowledged message (its push and status were lost with
    a process) is in the conversation's history;
  - every message got a SendAck or a status (a client's outbox takes
    either as its confirmation), and no client_msg_id two msg_ids
    (SendAcks and statuses agree);
  - no seq was given twice in a conversation, and none went back: a
    message sent after another one's SendAck came has a greater seq;
  - nothing arrived that was not sent.
"""

import asyncio
import bisect
import sys
import time

import imctest
from imctest import IO_TIMEOUT


def pb():
    return imctest.pb()


async def wait_either(task, event, timeout):
    """Until task ends, event is set or timeout passes."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([task, waiter], timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


def history_all(srv, user, conv, token):
    """Every message of conversation conv, as user reads it through srv
    (token: user -> JWT)."""
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


class Phase:
    """What happened while one phase of a test ran (from its fault to
    the next one's)."""

    def __init__(self, name):
        self.name = name
        self.started = time.monotonic()
        self.first_sends = 0
        self.resends = 0
        self.unavailable = 0  # UNAVAILABLE answers (retried)
        self.why = {}  # the Error's message -> how many
        self.reconnects = 0


class Ledger:
    """The plan (total messages spread over senders, each sender's to the
    recipients in turn) and everything seen of it."""

    def __init__(self, senders, recipients, total):
        self.senders = list(senders)
        self.recipients = list(recipients)
        n = total // len(senders)
        self.total = n * len(senders)
        self.plan = {u: [("m%06d" % k, recipients[(k + i) % len(recipients)])
                         for k in range(n)]
                     for i, u in enumerate(senders)}
        self.to_of = {(u, c): to for u in senders for c, to in self.plan[u]}
        self.acked = {}  # (user, cmid) -> (msg_id, seq, conversation)
        self.final = {}  # (user, cmid) -> the DeliveryStatus state
        self.status_id = {}  # (user, cmid) -> msg_id of its status
        self.refused_once = {}  # (user, cmid) -> its UNAVAILABLE answers
        self.pushed = {}  # recipient -> [(msg_id, seq, conversation)]
        self.errors = []  # (user, cmid, what): answers no client accepts
        self.sent = 0  # sends, resends included
        self.sends = {}  # (user, cmid) -> how many times sent
        self.first_sent = {}  # (user, cmid) -> (phase index, time)
        self.acked_at = {}  # (user, cmid) -> time of its first SendAck
        self.phases = [Phase("start")]

    @property
    def phase(self):
        return self.phases[-1]

    def begin(self, name):
        """A new phase (a fault) starts now."""
        self.phases.append(Phase(name))

    def unfinished(self, user):
        """user's messages without a final status, in plan order."""
        return [(c, to) for c, to in self.plan[user]
                if (user, c) not in self.final]

    def count_send(self, user, cmid):
        self.sent += 1
        self.sends[(user, cmid)] = self.sends.get((user, cmid), 0) + 1
        if (user, cmid) in self.first_sent:
            self.phase.resends += 1
        else:
            self.first_sent[(user, cmid)] = (len(self.phases) - 1,
                                             time.monotonic())
            self.phase.first_sends += 1

    def on_answer(self, user, cmid, fr):
        """The answer fr (a ServerFrame) to a send of (user, cmid)."""
        if fr.WhichOneof("body") != "send_ack":
            self.errors.append((user, cmid, str(fr).replace("\n", " ")))
            return
        a = fr.send_ack
        got = (a.msg_id, a.seq, a.conversation_id)
        first = self.acked.setdefault((user, cmid), got)
        if first is got:
            self.acked_at[(user, cmid)] = time.monotonic()
        elif first != got:
            self.errors.append((user, cmid, "acknowledged as %r, then %r"
                                % (first, got)))
        told = self.status_id.get((user, cmid), a.msg_id)
        if told != a.msg_id:
            self.errors.append((user, cmid, "status for %s, then "
                                "acknowledged as %s" % (told, a.msg_id)))

    def story(self, k):
        """How message k went: its sends, UNAVAILABLE answers, and the
        phase its first SendAck came in."""
        at = self.acked_at.get(k)
        acked = [p.name for p in self.phases if at and p.started <= at]
        return "%s %s: sent %d times, UNAVAILABLE %s, acknowledged in " \
            "phase %s" % (k[0], k[1], self.sends.get(k, 0),
                          self.refused_once.get(k, []),
                          acked[-1] if acked else None)

    def on_unavailable(self, user, cmid, error):
        """A send of (user, cmid) answered UNAVAILABLE (to be resent)."""
        self.refused_once.setdefault((user, cmid), []).append(error.message)
        self.phase.unavailable += 1
        why = self.phase.why
        why[error.message] = why.get(error.message, 0) + 1

    def on_status(self, user, st):
        k = (user, st.client_msg_id)
        self.final[k] = st.state
        first = self.status_id.setdefault(k, st.msg_id)
        known = self.acked.get(k, (first,))[0]
        if st.msg_id not in (first, known) or first != known:
            self.errors.append(k + ("status for %s; known as %s and %s"
                                    % (st.msg_id, first, known),))

    def on_push(self, user, m):
        self.pushed.setdefault(user, []).append(
            (m.msg_id, m.seq, m.conversation_id))

    async def verify(self, test, offline, history, wait=IO_TIMEOUT,
                     every_status=False):
        """The final check (test: the TestCase). offline(user): user's
        whole inbox; history(user, conv): conv as user reads it; wait:
        how long an inbox may take to hold every message; every_status:
        every acknowledged message must also have had its final status
        (its resends re-drove what a crash cut short). Prints the counts,
        in all and per phase."""
        missing = [k for k in self.to_of
                   if k not in self.acked and k not in self.status_id]
        test.assertEqual(sorted(missing)[:10], [], "%d sends neither "
                         "acknowledged nor confirmed by a status"
                         % len(missing))
        want = {}  # msg_id -> (user, cmid, seq, conversation)
        for (u, cmid), (msg_id, seq, conv) in self.acked.items():
            want[msg_id] = (u, cmid, seq, conv)
        # Confirmed by its status alone: seq and conversation unknown.
        status_only = [k for k in self.status_id if k not in self.acked]
        for k in status_only:
            want[self.status_id[k]] = k + (None, None)
        received, dups = {}, {}  # dups: msg_id -> copies removed
        for r in self.recipients:
            got = list(self.pushed.get(r, []))
            deadline = time.monotonic() + wait
            expect = {m for m, k in want.items()
                      if self.to_of[k[:2]] == r and k[:2] in self.final}
            while True:
                inbox = offline(r)
                have = {m for m, _, _ in got} | {m["msg_id"] for m in inbox}
                if expect <= have or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            got += [(m["msg_id"], m["seq"], m["conversation_id"])
                    for m in inbox]
            for msg_id, seq, conv in got:
                if msg_id in received:
                    dups[msg_id] = dups.get(msg_id, 0) + 1
                    test.assertEqual(received[msg_id], (r, seq, conv),
                                     "%s arrived differently" % msg_id)
                else:
                    received[msg_id] = (r, seq, conv)
        # A message whose sender saw DELIVERED or STORED reached its
        # recipient. One that only got its SendAck (its push was in
        # flight when a process died, and the status with it) is in the
        # conversation's history: accepted, so not lost.
        if every_status:
            none = sorted(m for m, k in want.items()
                          if k[:2] not in self.final)
            test.assertEqual(none[:10], [], "%d acknowledged messages "
                             "without a final status" % len(none))
        confirmed = {m for m, k in want.items() if k[:2] in self.final}
        lost = sorted(m for m in confirmed if m not in received)
        test.assertEqual(["%s %s->%s %s" % (m, want[m][0], self.to_of[
            want[m][:2]], want[m][1]) for m in lost[:10]], [],
            "%d confirmed messages lost" % len(lost))
        # The worker may store them a while after their SendAck (a backend
        # that came back): up to `wait` seconds.
        unconfirmed = [m for m in want if m not in received]
        t0 = time.monotonic()
        while True:
            in_history = set()
            for conv in {want[m][3] for m in unconfirmed}:
                reader = [u for u in conv.split(":")[1:]
                          if u in self.recipients][0]
                in_history |= {h["msg_id"] for h in history(reader, conv)}
            gone = sorted(m for m in unconfirmed if m not in in_history)
            if not gone or time.monotonic() - t0 > wait:
                break
            await asyncio.sleep(0.5)
        test.assertEqual(gone[:10], [], "%d acknowledged messages neither "
                         "received nor in the history %.0f s after the end"
                         % (len(gone), time.monotonic() - t0))
        if time.monotonic() - t0 > 1:
            print("no-loss: the history held every acknowledged message "
                  "%.1f s after the end" % (time.monotonic() - t0),
                  file=sys.stderr)
        extra = [m for m in received if m not in want]
        test.assertEqual(extra[:10], [], "%d messages never acknowledged "
                         "arrived" % len(extra))
        seqs = {}
        for msg_id, (r, seq, conv) in received.items():
            u, cmid, aseq, aconv = want[msg_id]
            if aseq is None:  # status only
                aseq, aconv = seq, conv
            test.assertEqual((r, seq, conv),
                             (self.to_of[(u, cmid)], aseq, aconv), msg_id)
            seqs.setdefault(conv, {}).setdefault(seq, set()).add(msg_id)
        # Every acknowledged message arrived, so a counter that went back
        # after a restart would show as a seq given twice, or as a message
        # sent after another's SendAck with a smaller seq.
        reused = [(c, s, sorted(m)) for c, d in seqs.items()
                  for s, m in d.items() if len(m) > 1]
        test.assertEqual(reused[:10], [], "a seq given to several messages")
        back = self.backwards()
        test.assertEqual(back[:10], [], "%d seqs went back" % len(back))
        test.assertEqual(len(received) + len(unconfirmed), self.total)
        self.report(received, dups, unconfirmed, status_only)

    def backwards(self):
        """Messages whose seq is not above that of every message of their
        conversation acknowledged before they were first sent."""
        by_conv = {}
        for k, (msg_id, seq, conv) in self.acked.items():
            by_conv.setdefault(conv, []).append(k)
        bad = []
        for conv, keys in by_conv.items():
            acks = sorted((self.acked_at[k], self.acked[k][1]) for k in keys)
            times = [t for t, _ in acks]
            top, best = [], 0  # top[i]: the greatest seq of acks[:i + 1]
            for _, seq in acks:
                best = max(best, seq)
                top.append(best)
            for k in keys:
                i = bisect.bisect_left(times, self.first_sent[k][1])
                if i and top[i - 1] >= self.acked[k][1]:
                    bad.append((conv, k, self.acked[k][1], top[i - 1]))
        return bad

    def report(self, received, dups, unconfirmed, status_only):
        D, S = pb().DeliveryStatus.DELIVERED, pb().DeliveryStatus.STORED
        n = len(self.phases)
        # acked, D, S, received, dups, unconfirmed, status only
        rows = [[0] * 7 for _ in range(n)]
        key_of = {v[0]: k for k, v in self.acked.items()}
        key_of.update((self.status_id[k], k) for k in status_only)
        for msg_id, k in key_of.items():
            row = rows[self.first_sent[k][0]]
            row[0] += k in self.acked
            row[1] += self.final.get(k) == D
            row[2] += self.final.get(k) == S
            row[3] += msg_id in received
            row[4] += dups.get(msg_id, 0)
            row[6] += k not in self.acked
        for m in unconfirmed:
            rows[self.first_sent[key_of[m]][0]][5] += 1
        states = list(self.final.values())
        print("no-loss: sent %d (resends included), acknowledged %d, "
              "DELIVERED %d, STORED %d, received %d, duplicates removed "
              "%d, acknowledged without a status and found in the "
              "history %d, confirmed by a status without a SendAck %d"
              % (self.sent, len(self.acked), states.count(D),
                 states.count(S), len(received), sum(dups.values()),
                 len(unconfirmed), len(status_only)), file=sys.stderr)
        for m in sorted(unconfirmed)[:10]:
            k = key_of[m]
            print("no-loss:   in the history only: %s %s to %s, msg_id %s, "
                  "sent %d times" % (k[0], k[1], self.to_of[k], m,
                                     self.sends.get(k, 0)), file=sys.stderr)
        why = {}
        for k in status_only:
            w = self.refused_once.get(k, ["no UNAVAILABLE answer"])[-1]
            why[w] = why.get(w, 0) + 1
        for w, count in sorted(why.items()):
            print("no-loss:   status without a SendAck %6d, the last "
                  "answer to its sends: %s" % (count, w), file=sys.stderr)
        if n == 1:
            return
        for p, row in zip(self.phases, rows):
            print("no-loss: phase %-22s first sends %6d, resends %6d, "
                  "UNAVAILABLE %5d, reconnects %3d | of its first sends: "
                  "acknowledged %6d, DELIVERED %6d, STORED %6d, received "
                  "%6d, duplicates removed %5d, in the history only %4d, "
                  "status without a SendAck %4d"
                  % ((p.name, p.first_sends, p.resends, p.unavailable,
                      p.reconnects) + tuple(row)), file=sys.stderr)
            for why, count in sorted(p.why.items()):
                print("no-loss:   UNAVAILABLE %6d: %s" % (count, why),
                      file=sys.stderr)

#!/usr/bin/python3
"""imchatd's limits under attack, on loopback: slowloris, ping floods, a
fragment flood, a client that never reads, connection floods. Each attack
is bounded in count and time and runs while a legitimate pair (alice and
bob) chats: every round trip alice -> bob (send, Deliver) must stay under
RTT_MAX, and the server's memory under a bound (/proc/PID/status).

test_conformance.py checks one refusal of each connection limit and a
single oversized frame header; the floods here extend those.

Run: IMCHATD=build/hosts/imchatd IMC_PROTO_DIR=proto/imchat/v1 \
     /usr/bin/python3 tests/e2e/test_attack.py [-k PATTERN]
"""

import asyncio
import os
import select
import socket
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imctest  # noqa: E402
from imctest import IO_TIMEOUT, http_get, upgrade_request  # noqa: E402
from test_chat import ChatTest, Client, http, prom_value, token  # noqa: E402
from test_conformance import RawWS, frame  # noqa: E402

# Memory is read from /proc/PID/status (VmRSS, VmHWM). AddressSanitizer
# keeps freed memory in a quarantine (256 MiB by default) to catch uses
# after free; every message passed through would count as growth. Its
# servers here get a small one, so the bounds measure what is held.
os.environ["ASAN_OPTIONS"] = ":".join(
    o for o in (os.environ.get("ASAN_OPTIONS"), "quarantine_size_mb=8") if o)

RTT_MAX = 2.0          # s: a legitimate round trip during an attack
HANDSHAKE_S = 10.0     # the upgrade deadline (doc/protocol.md)
MSG_MAX = 65536 + 1024  # the default message limit: body + envelope


def pb():
    return imctest.pb()


def proc_kib(pid, field):
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics(port):
    r = http_get(port, "/metrics")
    if r.status != 200:
        raise AssertionError("/metrics: %r" % r)
    return r.body.decode()


class Attacker(threading.Thread):
    """Runs fn(stop) on a thread; stop is a threading.Event. join() raises
    what fn raised."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.stop = threading.Event()
        self.error = None
        self.result = None

    def run(self):
        try:
            self.result = self.fn(self.stop)
        except BaseException as e:  # reported by finish()
            self.error = e

    def finish(self, timeout=30):
        self.stop.set()
        self.join(timeout)
        if self.is_alive():
            raise AssertionError("the attacker thread did not stop")
        if self.error is not None:
            raise self.error
        return self.result


class AttackTest(ChatTest):

    async def asyncSetUp(self):
        await super().asyncSetUp()
        self.rtts = []  # every round trip of the test

    def note(self, **measured):
        """Prints what the test measured (kept in the test log)."""
        rtt = max(self.rtts) if self.rtts else 0
        sys.stderr.write("\n  measured: %d round trips, slowest %.3f s; %s\n"
                         % (len(self.rtts), rtt,
                            ", ".join("%s %s" % kv for kv in
                                      measured.items())))

    async def pair(self, srv):
        """alice and bob, connected."""
        alice = await self.client(srv, "alice")
        bob = await self.client(srv, "bob")
        return alice, bob

    async def rtt(self, alice, bob):
        """Seconds from alice's send to bob's Deliver of it (bob ACKs)."""
        t0 = time.monotonic()
        a = await alice.sent(to="bob", body=b"still there?")
        m = await bob.deliver(a.msg_id)
        took = time.monotonic() - t0
        await bob.ack(m.msg_id)
        return took

    async def chat_while(self, alice, bob, busy, min_rounds=5,
                         timeout=60.0):
        """Round trips alice -> bob while busy() is true (and at least
        min_rounds); each must take under RTT_MAX. Returns them."""
        rtts = []
        deadline = time.monotonic() + timeout
        while busy() or len(rtts) < min_rounds:
            if time.monotonic() > deadline:
                raise AssertionError("attack still running after %.0f s"
                                     % timeout)
            took = await self.rtt(alice, bob)
            self.assertLess(took, RTT_MAX, "round trip %d took %.2f s "
                            "during the attack (earlier: %s)"
                            % (len(rtts) + 1, took, rtts))
            rtts.append(took)
            self.rtts.append(took)
            await asyncio.sleep(0.1)
        return rtts


# ---------------------------------------------------------------------------
# Slowloris: request heads one byte a second
# ---------------------------------------------------------------------------

class TestSlowloris(AttackTest):

    N = 100

    async def test_slow_heads_closed_at_handshake_deadline(self):
        srv = self.server()
        port = srv.port
        head = upgrade_request(port, token=token("loris")).encode()
        socks = []
        opened = {}
        for _ in range(self.N):
            s = socket.create_connection(("127.0.0.1", port),
                                         timeout=IO_TIMEOUT)
            opened[s] = time.monotonic()
            socks.append(s)
            self.addCleanup(s.close)

        def loris(stop):
            """A byte of the head per socket per second; notes when each
            socket is closed and anything it receives."""
            closed, got = {}, {}
            sent = 0
            next_byte = time.monotonic()
            while len(closed) < len(socks) and not stop.is_set():
                now = time.monotonic()
                if now >= next_byte:
                    for s in socks:
                        if s not in closed:
                            try:
                                s.send(head[sent:sent + 1])
                            except OSError:
                                pass  # seen as closed below
                    sent += 1
                    next_byte = now + 1.0
                live = [s for s in socks if s not in closed]
                r, _, _ = select.select(live, [], [], 0.05)
                for s in r:
                    try:
                        data = s.recv(4096)
                    except OSError:
                        data = b""
                    if data:
                        got[s] = got.get(s, b"") + data
                    else:
                        closed[s] = time.monotonic()
            return closed, got, sent

        attack = Attacker(loris)
        attack.start()
        # The pair connects and chats while the slow heads are open.
        alice, bob = await self.pair(srv)
        rtts = await self.chat_while(alice, bob, attack.is_alive,
                                     timeout=HANDSHAKE_S + 20)
        closed, got, sent = attack.finish()
        self.assertEqual(len(closed), self.N, "connections still open")
        self.assertLess(sent, len(head), "the head was complete")
        self.assertEqual(got, {}, "the server answered a slow head")
        lived = sorted(closed[s] - opened[s] for s in socks)
        # Closed at the deadline: not before it, and soon after it.
        self.assertGreaterEqual(lived[0], HANDSHAKE_S - 0.5, lived)
        self.assertLess(lived[-1], HANDSHAKE_S + 5, lived)
        m = metrics(port)
        self.assertEqual(prom_value(m, "imchat_gateway_handshake_timeouts"
                                       "_total"), self.N)
        self.assertGreaterEqual(len(rtts), 5, rtts)
        self.note(closed_after_s="%.2f-%.2f" % (lived[0], lived[-1]))


# ---------------------------------------------------------------------------
# Ping floods
# ---------------------------------------------------------------------------

def ping_burst(n):
    """n WebSocket pings (125 bytes each) and n protobuf Pings,
    interleaved."""
    cf = pb().ClientFrame(id=1)
    cf.ping.client_time_ms = 1
    proto = frame(2, cf.SerializeToString())
    return (frame(9, b"p" * 125) + proto) * n


class TestPingFlood(AttackTest):

    FLOOD_S = 4.0

    async def flood(self, read):
        """One connection sends pings as fast as it can for FLOOD_S while
        alice and bob chat; returns (server, bytes the flooder got out,
        bytes it read, whether the server closed it, CPU seconds of the
        server in the flood's second half)."""
        srv = self.server()
        alice, bob = await self.pair(srv)
        w = RawWS(srv.port, user="flooder")
        self.addCleanup(w.close)
        self.assertEqual(w.status, 101)
        w.sock.setblocking(False)
        burst = ping_burst(256)
        pid = srv.proc.pid
        cpu = {}

        def run(stop):
            out = inn = 0
            closed = False
            pending = b""
            start = time.monotonic()
            while not stop.is_set():
                t = time.monotonic() - start
                if t >= self.FLOOD_S:
                    break
                if "half" not in cpu and t >= self.FLOOD_S / 2:
                    cpu["half"] = cpu_seconds(pid)
                rl = [w.sock] if read else []
                r, wr, _ = select.select(rl, [w.sock], [], 0.05)
                try:
                    if r:
                        data = w.sock.recv(1 << 20)
                        if not data:
                            closed = True
                            break
                        inn += len(data)
                    if wr:
                        if not pending:
                            pending = burst
                        n = w.sock.send(pending)
                        out += n
                        pending = pending[n:]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    closed = True
                    break
            cpu["end"] = cpu_seconds(pid)
            return out, inn, closed

        attack = Attacker(run)
        rss0 = proc_kib(pid, "VmRSS")
        attack.start()
        rtts = await self.chat_while(alice, bob, attack.is_alive)
        out, inn, closed = attack.finish()
        grew = proc_kib(pid, "VmHWM") - rss0
        half_cpu = cpu["end"] - cpu.get("half", cpu["end"])
        # The server still answers a ping of alice's.
        await imctest.send_frame(alice.ws, imctest.ping_frame(900))
        r = await alice.reply(900)
        self.assertEqual(r.WhichOneof("body"), "pong", r)
        return srv, out, inn, closed, half_cpu, grew, rtts

    async def test_flood_without_reading_is_held_back(self):
        # The answers pile up on a client that does not read them: the
        # server stops reading it (TCP holds the flood back) or closes
        # it at its queue limit. Either way the flood is bounded and the
        # server goes idle.
        srv, out, inn, closed, half_cpu, grew, rtts = \
            await self.flood(read=False)
        self.note(flood_bytes_out=out, closed=closed,
                  server_cpu_2nd_half_s="%.2f" % half_cpu, memory_kib=grew)
        self.assertLess(out, 64 << 20,
                        "the server read %d bytes of pings nobody reads "
                        "the answers of" % out)
        self.assertLess(half_cpu, 0.5 * self.FLOOD_S / 2,
                        "the server spent %.2f s of CPU in the flood's "
                        "second half" % half_cpu)
        self.assertLess(grew, 32 << 10, "server memory grew %d KiB" % grew)
        q = prom_value(metrics(srv.port),
                       "imchat_gateway_outbound_queued_bytes")
        self.assertLessEqual(q, (1 << 20) + 64 * 1024)

    async def test_flood_while_reading_leaves_others_served(self):
        # A flooder that reads its pongs gets them as fast as it sends;
        # the others' round trips stay short (each connection gets its
        # share of every loop turn).
        srv, out, inn, closed, half_cpu, grew, rtts = \
            await self.flood(read=True)
        self.note(flood_bytes_out=out, pongs_bytes_in=inn,
                  server_cpu_2nd_half_s="%.2f" % half_cpu, memory_kib=grew)
        self.assertFalse(closed)
        self.assertGreater(inn, 0)
        self.assertLess(grew, 32 << 10, "server memory grew %d KiB" % grew)


# ---------------------------------------------------------------------------
# Fragment floods
# ---------------------------------------------------------------------------

def read_close_code(w, timeout=IO_TIMEOUT):
    """Reads w until the server's close frame; returns its code, None if
    the connection ended without one, "open" if it is still open after
    timeout seconds."""
    w.sock.settimeout(timeout)
    try:
        while True:
            fin, op, payload = w.recv_frame()
            if op == 8:
                return struct.unpack("!H", payload[:2])[0]
    except (EOFError, ConnectionResetError):
        return None
    except socket.timeout:
        return "open"


class TestFragmentFlood(AttackTest):

    N = 20

    async def fragments(self, srv, size, total):
        """N connections each send one binary message in fragments of size
        bytes, total bytes in all, never finished; returns their close
        codes and the server's peak memory growth (KiB)."""
        conns = [RawWS(srv.port, user="frag%d" % i) for i in range(self.N)]
        for w in conns:
            self.addCleanup(w.close)
        first = frame(2, b"x" * size, fin=False)
        cont = frame(0, b"x" * size, fin=False)
        data = first + cont * (total // size - 1)
        rss0 = proc_kib(srv.proc.pid, "VmRSS")

        def send_all(stop):
            for w in conns:
                try:
                    w.sock.sendall(data)
                except OSError:
                    pass  # closed after its 1009
        attack = Attacker(send_all)
        attack.start()
        alice, bob = self.alice, self.bob
        await self.chat_while(alice, bob, attack.is_alive)
        attack.finish()
        grew = proc_kib(srv.proc.pid, "VmHWM") - rss0
        codes = [read_close_code(w, timeout=2) for w in conns]
        return codes, grew

    async def asyncSetUp(self):
        await super().asyncSetUp()
        self.srv = self.server()
        self.alice, self.bob = await self.pair(self.srv)

    async def test_past_the_limit_1009(self):
        # 4 KiB fragments up to 4 times the limit: 1009 once the message
        # is past it; the server holds at most the limit per connection.
        codes, grew = await self.fragments(self.srv, 4096, 4 * MSG_MAX)
        self.note(memory_kib=grew)
        self.assertEqual(codes, [1009] * self.N)
        self.assertLess(grew, 16 << 10, "server memory grew %d KiB" % grew)

    async def test_tiny_fragments_1009(self):
        # 1-byte fragments just under the limit: each fragment costs the
        # server a buffer, so a message may not come in more than one
        # frame per 64 bytes of the limit (doc/protocol.md).
        codes, grew = await self.fragments(self.srv, 1, MSG_MAX - 1)
        self.note(memory_kib=grew)
        self.assertEqual(codes, [1009] * self.N, "server memory grew %d "
                         "KiB" % grew)
        self.assertLess(grew, 16 << 10, "server memory grew %d KiB for %d "
                        "connections" % (grew, self.N))

    async def test_announced_past_the_limit_refused_at_header(self):
        # A continuation header that would take the message past the
        # limit is refused at once: its payload is never sent.
        w = RawWS(self.srv.port, user="announcer")
        self.addCleanup(w.close)
        w.send(frame(2, b"x" * 60000, fin=False))
        w.send(frame(0, b"", length=("16", MSG_MAX - 60000 + 1))[:8])
        self.assertEqual(read_close_code(w), 1009)
        took = await self.rtt(self.alice, self.bob)
        self.assertLess(took, RTT_MAX)
        self.rtts.append(took)


# ---------------------------------------------------------------------------
# A client that never reads
# ---------------------------------------------------------------------------

class Upgraded(RawWS):
    """RawWS over a socket that sent its upgrade request itself."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""
        while b"\r\n\r\n" not in self.buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError("closed during the upgrade: %r"
                                     % self.buf)
            self.buf += chunk
        self.head, self.buf = self.buf.split(b"\r\n\r\n", 1)


class TestNeverReads(AttackTest):

    async def test_closed_at_queue_limit_nothing_lost(self):
        # carol connects and never reads a byte; alice sends her 64 KiB
        # messages. Once carol's queue passes 1 MiB she is closed (1008),
        # the messages she did not ACK go to her inbox, and the server's
        # memory stays put.
        srv = self.server("--rate-limit", "10000", "--rate-burst", "10000",
                          "--user-rate-limit", "10000",
                          "--user-rate-burst", "10000")
        alice, bob = await self.pair(srv)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(IO_TIMEOUT)
        s.connect(("127.0.0.1", srv.port))
        self.addCleanup(s.close)
        s.sendall(upgrade_request(srv.port, token=token("carol")).encode())
        rss0 = proc_kib(srv.proc.pid, "VmRSS")

        n = 0
        sent = []
        queued_max = 0
        body = b"m" * 65536
        deadline = time.monotonic() + 60
        while True:
            text = metrics(srv.port)
            queued_max = max(queued_max, prom_value(
                text, "imchat_gateway_outbound_queued_bytes"))
            if prom_value(text, "imchat_gateway_slow_reader_closes_total"):
                break
            self.assertLess(time.monotonic(), deadline,
                            "carol not closed after %d messages" % n)
            self.assertLess(n, 1000, "carol not closed after %d messages"
                            % n)
            for _ in range(8):
                sent.append((await alice.sent(to="carol", body=body)).msg_id)
                n += 1
            took = await self.rtt(alice, bob)
            self.assertLess(took, RTT_MAX)
            self.rtts.append(took)

        # carol reads now: what was on its way, then the close frame.
        w = Upgraded(s)
        self.assertTrue(w.head.startswith(b"HTTP/1.1 101 "), w.head[:200])
        self.assertEqual(read_close_code(w), 1008)
        self.assertLessEqual(queued_max, (1 << 20) + 65536 + 1024)
        grew = proc_kib(srv.proc.pid, "VmHWM") - rss0
        self.note(messages=n, queued_max=int(queued_max), memory_kib=grew)
        # What she was sent (n * 64 KiB) passes through; what stays is the
        # queue limit and the store's cache.
        self.assertLess(grew, 48 << 10, "server memory grew %d KiB" % grew)
        # Nothing lost: every message is in carol's inbox.
        for msg_id in sent:
            await alice.status(msg_id)
        r = http(srv.port, "GET", "/offline?limit=1000",
                 bearer=token("carol"))
        got = [m["msg_id"] for m in r.json()["messages"]]
        self.assertEqual(sorted(got), sorted(sent))


# ---------------------------------------------------------------------------
# Connection floods against the limits
# ---------------------------------------------------------------------------

def count_refusals(port, reason):
    return prom_value(metrics(port), "imchat_gateway_refused_total",
                      'reason="%s"' % reason)


class TestConnectionFlood(AttackTest):

    async def pair_from(self, srv, source):
        """alice and bob connected from the address source."""
        out = []
        for user in ("alice", "bob"):
            sock = socket.create_connection(("127.0.0.1", srv.port),
                                            source_address=(source, 0))
            ws = await self.stack.enter_async_context(srv.connect(
                token=token(user), sock=sock))
            hello = (await imctest.welcome(ws)).welcome
            out.append(Client(srv, user, "default", ws, hello))
        return out

    def open_many(self, srv, n, source):
        """n upgrades from source; returns (accepted, refused) RawWS."""
        ok, refused = [], []
        for _ in range(n):
            w = RawWS(srv.port, user="crowd", source=source)
            self.addCleanup(w.close)
            (ok if w.status == 101 else refused).append(w)
        return ok, refused

    def assertRefused(self, refused):
        for w in refused:
            self.assertEqual(w.status, 503, w.head)
            self.assertRegex(w.head, r"(?im)^Retry-After: \d+$")
            self.assertIn(b'"UNAVAILABLE"', w.buf)

    async def test_per_ip_flood(self):
        srv = self.server("--max-connections-per-ip", "4",
                          "--max-devices", "100")
        alice, bob = await self.pair_from(srv, "127.0.0.2")
        results = {}

        def crowd(stop):
            results["r"] = self.open_many(srv, 60, "127.0.0.1")
        attack = Attacker(crowd)
        attack.start()
        await self.chat_while(alice, bob, attack.is_alive)
        attack.finish()
        ok, refused = results["r"]
        self.assertEqual(len(ok), 4)
        self.assertEqual(len(refused), 56)
        self.assertRefused(refused)
        self.assertEqual(count_refusals(srv.port, "max_connections_per_ip"),
                         56)
        self.assertEqual(count_refusals(srv.port, "max_connections"), 0)
        self.note(accepted=len(ok), refused=len(refused))
        # Refusals hold no slot: 4 of the crowd and the pair.
        self.assertEqual(prom_value(metrics(srv.port),
                                    "imchat_gateway_websockets"), 6)
        for w in ok:
            w.close()
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            again = RawWS(srv.port, user="crowd")
            self.addCleanup(again.close)
            if again.status == 101:
                break
            self.assertLess(time.monotonic(), deadline, again.head)
            await asyncio.sleep(0.05)

    async def test_global_flood(self):
        srv = self.server("--max-connections", "10", "--max-devices", "100")
        alice, bob = await self.pair(srv)
        results = {}

        def crowd(stop):
            got = [self.open_many(srv, 10, "127.0.0.%d" % i)
                   for i in range(3, 6)]
            results["r"] = ([w for ok, _ in got for w in ok],
                            [w for _, r in got for w in r])
        attack = Attacker(crowd)
        attack.start()
        await self.chat_while(alice, bob, attack.is_alive)
        attack.finish()
        ok, refused = results["r"]
        self.assertEqual((len(ok), len(refused)), (8, 22))
        self.assertRefused(refused)
        self.assertEqual(count_refusals(srv.port, "max_connections"), 22)
        self.note(accepted=len(ok), refused=len(refused))
        # Plain HTTP is still served at the limit.
        self.assertEqual(http_get(srv.port, "/healthz").status, 200)
        self.assertEqual(prom_value(metrics(srv.port),
                                    "imchat_gateway_websockets"), 10)


if __name__ == "__main__":
    imctest.main()

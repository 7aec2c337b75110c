"""examples/python_echo_bot.py against a real imchatd: a client gets its
messages back from echo-bot, also one sent while the bot was away (the
bot's offline sync), and the bot exits 0 on SIGTERM."""

import os
import signal
import subprocess
import sys
import threading
import unittest

import support
from support import IO_TIMEOUT, address, token

import imchat

BOT = os.environ.get("IMC_PYTHON_ECHO_BOT") or os.path.join(
    support.SRC_ROOT, "examples", "python_echo_bot.py")


class Bot:
    """The example as a child process; its stdout lines are collected."""

    def __init__(self, server, *args):
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, BOT, address(server), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=support.python_env())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, prefix):
        def seen():
            if self.proc.poll() is not None:
                raise AssertionError("the bot exited with %s:\n%s" % (
                    self.proc.returncode, self.proc.stderr.read()))
            return any(l.startswith(prefix) for l in self.lines)
        support.wait_for(seen, "the bot to print %r" % prefix)

    def stop(self):
        """SIGTERM; returns (exit status, stderr)."""
        if self.proc.stderr.closed:
            return self.proc.returncode, ""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(IO_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the bot ignored SIGTERM")
        self._reader.join(IO_TIMEOUT)
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc, err


class EchoBotTest(unittest.TestCase):
    def setUp(self):
        self.server = support.start_server()
        self.addCleanup(self.server.stop)

    def test_echoes_back_to_the_sender(self):
        bot = Bot(self.server, "--secret", self.server.secret)
        self.addCleanup(bot.stop)
        bot.wait_line("echo-bot online at ")

        with imchat.Client(address(self.server),
                           token(self.server, "alice")) as alice:
            alice.connect(IO_TIMEOUT)
            cmid = alice.send("echo-bot", "hello bot")
            echo = next(alice.messages(timeout=IO_TIMEOUT))
            self.assertEqual((echo.from_user, echo.to_user, echo.text),
                             ("echo-bot", "alice", "hello bot"))
            self.assertEqual(alice.wait_status(cmid, IO_TIMEOUT).state,
                             imchat.DeliveryState.DELIVERED)

            body = b"\x00\x01binary\xff"
            alice.send("echo-bot", body, content_type="application/x-bin")
            echo = next(alice.messages(timeout=IO_TIMEOUT))
            self.assertEqual((echo.body, echo.content_type),
                             (body, "application/x-bin"))
        self.assertEqual(bot.stop(), (0, ""))

    def test_message_sent_while_away_is_echoed_after_the_sync(self):
        with imchat.Client(address(self.server),
                           token(self.server, "bob")) as bob:
            bob.connect(IO_TIMEOUT)
            cmid = bob.send("echo-bot", "are you there?")
            self.assertEqual(bob.wait_status(cmid, IO_TIMEOUT).state,
                             imchat.DeliveryState.STORED)

            bot = Bot(self.server, "--token",
                      self.server.token("echo-bot"))  # imchatd token
            self.addCleanup(bot.stop)
            echo = next(bob.messages(timeout=IO_TIMEOUT))
            self.assertEqual((echo.from_user, echo.text),
                             ("echo-bot", "are you there?"))
        self.assertEqual(bot.stop(), (0, ""))


if __name__ == "__main__":
    unittest.main(verbosity=2)

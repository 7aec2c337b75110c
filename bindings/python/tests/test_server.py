"""imchat.Server: libimchat-server on a Python thread, with imchat.Client
users talking through it from the test's own thread."""

import os
import shutil
import socket
import tempfile
import threading
import unittest

import support
from support import IO_TIMEOUT

import imchat
from imchat import DeliveryState, errors

SECRET = "in-process-secret"


class ServerTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="imc-py-server-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def server(self, **flags):
        return imchat.Server(listen="127.0.0.1:0", data_dir=self.tmp,
                             jwt_secret=SECRET, **flags)

    def client(self, srv, user, **kw):
        return imchat.Client(srv.address, imchat.sign_token(SECRET, user),
                             **kw)

    def test_two_clients_through_the_server(self):
        bob_store = os.path.join(self.tmp, "bob.db")
        with self.assertLogs("imchat.server", "INFO") as logs:
            with self.server() as srv:
                host, _, port = srv.address.rpartition(":")
                self.assertEqual(host, "127.0.0.1")
                self.assertEqual(srv.port, int(port))
                self.assertGreater(srv.port, 0)
                with self.client(srv, "alice") as alice:
                    alice.connect(IO_TIMEOUT)
                    with self.client(srv, "bob", store=bob_store) as bob:
                        bob.connect(IO_TIMEOUT)
                        cmid = alice.send("bob", "hi from this process")
                        msg = next(bob.messages(timeout=IO_TIMEOUT))
                        self.assertEqual((msg.from_user, msg.text),
                                         ("alice", "hi from this process"))
                        self.assertEqual(
                            alice.wait_status(cmid, IO_TIMEOUT).state,
                            DeliveryState.DELIVERED)

                    cmid = alice.send("bob", "while you were away")
                    self.assertEqual(alice.wait_status(cmid, IO_TIMEOUT).state,
                                     DeliveryState.STORED)
                    with self.client(srv, "bob", store=bob_store) as bob:
                        bob.connect(IO_TIMEOUT)
                        msg = next(bob.messages(timeout=IO_TIMEOUT))
                        self.assertEqual(msg.text, "while you were away")
                        self.assertTrue(msg.offline)
        # The server's log went to the "imchat.server" logger, from its
        # thread, up to its last line.
        self.assertEqual(logs.records[-1].getMessage(), "stopped")
        self.assertNotEqual(logs.records[-1].thread, threading.get_ident())

    def test_reload(self):
        words = os.path.join(self.tmp, "words.txt")
        with open(words, "w") as f:
            f.write("spam\n")
        with self.assertLogs("imchat.server", "INFO") as logs, \
                self.server(filter_file=words) as srv, \
                self.client(srv, "alice") as alice:
            alice.connect(IO_TIMEOUT)
            with self.assertRaises(errors.Blocked):
                alice.wait_status(alice.send("bob", "spam"), IO_TIMEOUT)
            with open(words, "w") as f:
                f.write("eggs\n")
            srv.reload()  # from this thread; the server's applies it
            support.wait_for(lambda: any(
                "reloaded" in r.getMessage() for r in logs.records),
                "the reload")
            with self.assertRaises(errors.Blocked):
                alice.wait_status(alice.send("bob", "eggs"), IO_TIMEOUT)
            self.assertEqual(alice.wait_status(alice.send("bob", "spam"),
                                               IO_TIMEOUT).state,
                             DeliveryState.STORED)

    def test_stop_from_another_thread(self):
        srv = self.server().start()
        self.addCleanup(srv.close)
        with self.assertRaises(RuntimeError):
            srv.start()  # it runs once
        t = threading.Thread(target=srv.stop)
        t.start()
        t.join(IO_TIMEOUT)
        self.assertFalse(t.is_alive())
        self.assertFalse(srv._thread.is_alive())
        srv.close()
        srv.close()
        with self.assertRaises(errors.Closed):
            srv.start()
        with self.assertRaises(OSError):  # nobody listens any more
            socket.create_connection(("127.0.0.1", srv.port), timeout=2)

    def test_stop_before_start(self):
        srv = self.server()
        srv.stop()
        srv.start()  # returns at once: it was asked to stop
        srv.stop(IO_TIMEOUT)
        srv.close()

    def test_bad_flags(self):
        with self.assertRaises(errors.InvalidArgument) as cm:
            imchat.Server("--no-such-flag")
        self.assertIn("no-such-flag", str(cm.exception))
        with self.assertRaises(errors.InvalidArgument):
            imchat.Server("--help")
        with self.assertRaises(errors.InvalidArgument):
            self.server(max_body="lots")
        with self.assertRaises(errors.InvalidArgument):
            imchat.Server("--listen", "127.0.0.1:0\0x")

    def test_address_in_use(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            with self.assertRaises(errors.Io) as cm:
                imchat.Server(listen="127.0.0.1:%d" % s.getsockname()[1],
                              data_dir=self.tmp, jwt_secret=SECRET)
        self.assertTrue(str(cm.exception))


if __name__ == "__main__":
    unittest.main(verbosity=2)

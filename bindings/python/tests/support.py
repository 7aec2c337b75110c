"""Shared set-up of the binding's tests.

Environment (set by bindings/python/meson.build; the defaults fit a run
from the source tree with a build in build/):
  IMCHAT_LIB      libimchat.so of the build, loaded by the package
  IMCHATD         the imchatd binary the end-to-end tests start
  IMC_PROTO_DIR   proto/imchat/v1 (tests/e2e/imctest.py wants it)
  IMC_CC          the C compiler command (test_cdef preprocesses with it)
  IMC_INCLUDE_DIR include/ of the source tree

imchatd is run by tests/e2e/imctest.py's Server: on loopback, with its own
data directory, killed with the test runner.

Under ASan the tests run with the ASan runtime in LD_PRELOAD and leak
detection off (python is not leak-clean); both matter only at the start
of a process, so they are taken out of os.environ here: children (imchatd,
the C compiler) run as usual, imchatd with its leak check. A python child
that loads libimchat gets them back with python_env().
"""

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(HERE))                 # the package
sys.path.insert(0, os.path.join(SRC_ROOT, "tests", "e2e"))  # imctest

import imctest  # noqa: E402

_PRELOAD_ENV = {k: os.environ.pop(k) for k in ("LD_PRELOAD", "ASAN_OPTIONS")
                if k in os.environ}


def python_env():
    """The environment for a python child that loads libimchat."""
    return dict(os.environ, **_PRELOAD_ENV)

IO_TIMEOUT = imctest.IO_TIMEOUT


def include_dir():
    return os.environ.get("IMC_INCLUDE_DIR") or os.path.join(SRC_ROOT,
                                                             "include")


def start_server(*args):
    """A running imchatd (imctest.Server); stop it with .stop()."""
    return imctest.Server(*args).start()


def address(server):
    return "127.0.0.1:%d" % server.port


def token(server, user, device=None):
    """A token for user, signed by the binding with the server's secret."""
    import imchat
    return imchat.sign_token(server.secret, user, device)


def wait_for(cond, what, timeout=IO_TIMEOUT):
    """Polls cond (a condition another process or thread makes true)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)

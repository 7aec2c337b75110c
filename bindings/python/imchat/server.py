"""imchat.Server: the whole imchatd inside this process (libimchat-server,
server.h), its loop on a Python thread.

imc_server_run blocks; cffi releases the GIL during the call, so the rest
of the program runs on while the server serves. imc_server_stop may be
called from any thread. The server's log lines go to the Python logger
"imchat.server".
"""

import atexit
import logging
import threading
import weakref

from . import errors
from ._lib import cstr, ffi, pystr, server_lib

_log = logging.getLogger("imchat.server")
_LEVELS = [logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG]


@ffi.callback("void(void *, imc_log_level, const char *)")
def _cb_log(ud, level, line):
    _log.log(_LEVELS[level] if 0 <= level < len(_LEVELS) else logging.ERROR,
             "%s", pystr(line))


_running = weakref.WeakSet()


@atexit.register
def _stop_running():
    # A server thread is a daemon: stop it before the interpreter goes,
    # which its log callback still calls into.
    for s in list(_running):
        s.close()


def _argv(args, flags):
    argv = ["imchatd"] + [str(a) for a in args]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return argv


class Server:
    """A single-node imchat server in this process, made from imchatd's
    flags (imchatd --help), as arguments or as keywords:

        Server("--listen", "127.0.0.1:0", "--data-dir", d, "--jwt-secret", s)
        Server(listen="127.0.0.1:0", data_dir=d, jwt_secret=s)  # the same

    (a keyword True is a flag without a value, e.g. dev_login=True). The
    listener is bound when the constructor returns: .address is "ip:port"
    with port 0 resolved. start() runs it on a thread (once); stop() asks
    for a graceful stop (connections get up to 5 s to close; clients of
    this process should be closed first) and waits for the thread; close()
    stops and frees it. As a context manager it is started on entry and
    closed on exit.

    Raises errors.InvalidArgument (bad flags or values; the message says
    which) or errors.Io (data directory, store, listener in use, ...).
    """

    def __init__(self, *args, **flags):
        argv = _argv(args, flags)
        self._lib = server_lib()
        self._thread = None
        self._result = 0
        self._s = None
        c_args = [ffi.new("char[]", cstr(a, "flag")) for a in argv]
        err = ffi.new("char[]", 512)
        out = ffi.new("imc_server **")
        rv = self._lib.imc_server_new(out, len(argv),
                                      ffi.new("const char *[]", c_args),
                                      err, len(err))
        if rv < 0:
            raise errors.error(rv, pystr(err) or None)
        self._s = out[0]
        self._free = weakref.finalize(self, self._lib.imc_server_del, out[0])
        self._lib.imc_server_set_log(self._s, _cb_log, ffi.NULL)
        self.address = pystr(self._lib.imc_server_address(self._s))

    @property
    def port(self):
        """The bound port."""
        return int(self.address.rpartition(":")[2])

    def __enter__(self):
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        """Runs the server (imc_server_run) on a new daemon thread."""
        if self._s is None:
            raise errors.Closed("the server is closed")
        if self._thread is not None:
            raise RuntimeError("the server was started already (it runs "
                               "once)")
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="imchat-server " + self.address)
        _running.add(self)
        self._thread.start()
        return self

    def _run(self):
        self._result = self._lib.imc_server_run(self._s)

    def reload(self):
        """What SIGHUP does to imchatd: re-read --filter-file and
        --key-file (any thread)."""
        if self._s is not None:
            self._lib.imc_server_reload(self._s)

    def stop(self, timeout=None):
        """Asks for a graceful stop (any thread) and waits for the
        server's thread to end (at most timeout seconds: TimeoutError).
        Raises errors.Io if the server's loop had failed."""
        if self._s is None:
            return
        self._lib.imc_server_stop(self._s)
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the server did not stop within %s s"
                               % timeout)
        _running.discard(self)
        errors.check(self._result)

    def close(self):
        """Stops (if running) and frees the server. Idempotent."""
        if self._s is None:
            return
        try:
            self.stop()
        finally:
            self._s = None
            self._free()

"""imchat.Client: imc_client (client.h) on a Python socket.

The C client moves bytes and time; this class owns the TCP connection and
the loop. A turn of the loop (_turn) is the one of doc/client.md: open a
connection when the state says CONNECTING, wait with selectors for the
socket and the client's next deadline, feed what arrives to
imc_client_recv, write imc_client_output, run imc_client_on_timeout when
it is due, and run the offline sync over HTTP when imc_client_want_sync
says so.
"""

import collections
import contextlib
import errno
import itertools
import logging
import selectors
import socket
import threading
import time
import weakref

from . import errors
from ._lib import cstr, ffi, lib, pystr
from .types import DeliveryState, Message, Refused, SendAck, State, Status

_log = logging.getLogger("imchat.client")

_READ_SIZE = 65536
_HTTP_MAX = 64 << 20  # bytes: a larger offline or history answer is refused

_ONLINE = lib.IMC_CLIENT_ONLINE
_CONNECTING = lib.IMC_CLIENT_CONNECTING
_WAITING = lib.IMC_CLIENT_WAITING
_STOPPED = lib.IMC_CLIENT_STOPPED
_FAILED = lib.IMC_CLIENT_FAILED

# ---------------------------------------------------------------------------
# Callbacks from C. Each gets the user pointer the Client registered: a key
# into _clients, which holds weak references, so a Client that is dropped
# without close() is still freed (see Client._free). Exceptions raised by
# the application's callbacks are kept and raised again by the Client call
# that fed the client (they cannot cross the C frames).
# ---------------------------------------------------------------------------

_clients = {}
_ids = itertools.count(1)


def _dispatch(ud, method, *args):
    ref = _clients.get(int(ffi.cast("uintptr_t", ud)))
    client = ref() if ref is not None else None
    if client is None:
        return
    client._in_callback += 1
    try:
        getattr(client, method)(*args)
    except BaseException as e:  # noqa: B036 - raised again after the C call
        if client._exc is None:
            client._exc = e
    finally:
        client._in_callback -= 1


@ffi.callback("void(void *, imc_client_state, int)")
def _cb_state(ud, state, reason):
    _dispatch(ud, "_got_state", state, reason)


@ffi.callback("void(void *, const imc_msg *, uint32_t, uint64_t)")
def _cb_message(ud, msg, flags, last_seq):
    _dispatch(ud, "_got_message", msg, flags, last_seq)


@ffi.callback("void(void *, const char *, const char *, const char *, "
              "uint64_t)")
def _cb_send_ack(ud, client_msg_id, msg_id, conversation_id, seq):
    _dispatch(ud, "_got_ack", SendAck(pystr(client_msg_id), pystr(msg_id),
                                      pystr(conversation_id), seq))


@ffi.callback("void(void *, const char *, const char *, imc_delivery_state, "
              "const char *)")
def _cb_status(ud, client_msg_id, msg_id, state, user_id):
    _dispatch(ud, "_got_status", Status(pystr(client_msg_id), pystr(msg_id),
                                        DeliveryState(state), pystr(user_id)))


@ffi.callback("void(void *, const char *, int, const char *)")
def _cb_send_error(ud, client_msg_id, error, message):
    _dispatch(ud, "_got_refusal", pystr(client_msg_id), error,
              pystr(message) or None)


_LEVELS = {lib.IMC_LOG_ERROR: logging.ERROR, lib.IMC_LOG_WARN: logging.WARNING,
           lib.IMC_LOG_INFO: logging.INFO, lib.IMC_LOG_DEBUG: logging.DEBUG}


@ffi.callback("void(void *, imc_log_level, const char *)")
def _cb_log(ud, level, line):
    _log.log(_LEVELS.get(level, logging.ERROR), "%s", pystr(line))


def _max_log_level():
    """The most verbose imc_log_level the "imchat.client" logger would
    show, so the library does not format lines nobody reads."""
    eff = _log.getEffectiveLevel()
    for imc, py in sorted(_LEVELS.items(), reverse=True):
        if py >= eff:
            return imc
    return lib.IMC_LOG_ERROR


def _parse_address(address):
    if isinstance(address, tuple):
        host, port = address
    else:
        host, sep, port = str(address).rpartition(":")
        if not sep:
            raise errors.InvalidArgument("address %r is not HOST:PORT"
                                         % (address,))
        host = host.strip("[]")
    port = int(port)
    if not host or not 0 < port < 65536:
        raise errors.InvalidArgument("address %r is not HOST:PORT"
                                     % (address,))
    return host, port


class Client:
    """One device of one user, connected to a gateway (imc_client).

    address is "HOST:PORT" (or a (host, port) tuple) of the gateway, token
    the user's JWT (see imchat.sign_token). store is the SQLite file of the
    outbox, the inbox dedup set and the offline cursor (":memory:" keeps
    nothing across runs).

    Incoming messages go to on_message(Message) when it is given, else to a
    queue that messages() reads. Delivery statuses go to on_status(Status)
    and refused sends to on_refused(Refused), else to a queue that
    statuses() and wait_status() read. on_ack(SendAck) and
    on_state(State, error or None) are optional.

    A Client belongs to one thread at a time (see README). Callbacks run
    inside the call that drives the client (connect, run_until,
    messages, ...); from a callback only send(), stop() and the properties
    may be used. Use it as a context manager, or call close().
    """

    def __init__(self, address, token, *, store=":memory:", ws_path="/ws",
                 on_message=None, on_status=None, on_refused=None,
                 on_ack=None, on_state=None, backoff_ms=None,
                 resend_ms=None, page_limit=None, http_timeout=10.0):
        self._host, self._port = _parse_address(address)
        self._on_message = on_message
        self._on_status = on_status
        self._on_refused = on_refused
        self._on_ack = on_ack
        self._on_state = on_state
        self._http_timeout = http_timeout
        self._inbox = collections.deque()
        self._outcomes = collections.deque()
        self._exc = None
        self._in_callback = 0
        self._fail_reason = 0
        self._sync_failed = False
        self._sock = None
        self._sock_connected = False
        self._lock = threading.Lock()
        self._owner = None
        self._outp = ffi.new("const uint8_t **")
        self._c = None

        opt_p = ffi.new("imc_client_options **")
        errors.check(lib.imc_client_options_new(opt_p, ffi.NULL))
        opt = opt_p[0]
        key = next(_ids)
        try:
            cbs = ffi.new("imc_client_callbacks *", {
                "struct_size": ffi.sizeof("imc_client_callbacks"),
                "state": _cb_state, "message": _cb_message,
                "send_ack": _cb_send_ack, "status": _cb_status,
                "send_error": _cb_send_error})
            host_hdr = "%s:%d" % (self._host if ":" not in self._host
                                  else "[%s]" % self._host, self._port)
            chk = errors.check
            chk(lib.imc_client_options_set_store_path(opt,
                                                      cstr(store, "store")))
            chk(lib.imc_client_options_set_token(opt, cstr(token, "token")))
            chk(lib.imc_client_options_set_host(opt, cstr(host_hdr, "host")))
            chk(lib.imc_client_options_set_ws_path(opt,
                                                   cstr(ws_path, "ws_path")))
            chk(lib.imc_client_options_set_callbacks(
                opt, cbs, ffi.cast("void *", key)))
            chk(lib.imc_client_options_set_log(opt, _cb_log, ffi.NULL,
                                               _max_log_level()))
            if backoff_ms is not None:
                chk(lib.imc_client_options_set_backoff(opt, *backoff_ms))
            if resend_ms is not None:
                chk(lib.imc_client_options_set_resend_ms(opt, resend_ms))
            if page_limit is not None:
                chk(lib.imc_client_options_set_page_limit(opt, page_limit))
            out = ffi.new("imc_client **")
            _clients[key] = weakref.ref(self)
            rv = lib.imc_client_new(out, opt, ffi.NULL)
            if rv < 0:
                del _clients[key]
                raise errors.error(rv)
        finally:
            lib.imc_client_options_del(opt)
        self._c = out[0]
        # Frees the C client when the Client goes away without close().
        self._free = weakref.finalize(self, Client._release, out[0], key)
        self._sel = selectors.DefaultSelector()
        # stop() from a signal handler (or a callback) wakes the wait.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)

    @staticmethod
    def _release(c, key):
        lib.imc_client_del(c)
        _clients.pop(key, None)

    # -- context manager -------------------------------------------------

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- use by one thread; callbacks may send and stop ------------------

    @contextlib.contextmanager
    def _use(self, in_callback=False):
        if self._c is None:
            raise errors.Closed("the client is closed")
        me = threading.get_ident()
        if self._owner == me:  # re-entered: from a callback, or a cond()
            if self._in_callback and not in_callback:
                raise RuntimeError("this Client call is not allowed inside "
                                   "a callback (only send, stop and the "
                                   "properties are)")
            yield
            return
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("the Client is in use by another thread; a "
                               "Client belongs to one thread at a time")
        self._owner = me
        try:
            yield
            self._reraise()
        finally:
            self._owner = None
            self._lock.release()

    def _reraise(self):
        e, self._exc = self._exc, None
        if e is not None:
            raise e

    # -- properties ------------------------------------------------------

    @property
    def state(self):
        """The connection state (State)."""
        with self._use(in_callback=True):
            return State(lib.imc_client_get_state(self._c))

    @property
    def user_id(self):
        """The user id from the Welcome (or the store), or ""."""
        with self._use(in_callback=True):
            return pystr(lib.imc_client_get_user_id(self._c))

    @property
    def sync_pending(self):
        """True while an offline sync is due: after each Welcome, until
        the sync has read its last page (the loop runs it)."""
        with self._use(in_callback=True):
            return bool(lib.imc_client_want_sync(self._c))

    @property
    def outbox_size(self):
        """Sends not yet confirmed by a DeliveryStatus."""
        with self._use(in_callback=True):
            return lib.imc_client_outbox_size(self._c)

    # -- control -----------------------------------------------------------

    def start(self):
        """Starts connecting (from WAITING: at once, skipping the backoff).
        Raises errors.Closed when already connecting or connected, or when
        the token was refused (FAILED)."""
        with self._use():
            errors.check(lib.imc_client_start(self._c))

    def stop(self):
        """Drops the connection; no reconnect until start(). The outbox
        stays. Allowed inside a callback and in a signal handler of the
        thread that drives the client (a wait in progress ends)."""
        with self._use(in_callback=True):
            errors.check(lib.imc_client_stop(self._c))
            try:
                self._wake_w.send(b"\0")
            except BlockingIOError:
                pass  # a wake-up is pending already

    def connect(self, timeout=10.0):
        """Starts connecting if stopped or waiting, and drives the client
        until it is ONLINE. Raises TimeoutError after timeout seconds, or
        the error that refused the token (errors.Auth) if it FAILED."""
        if self.state in (State.STOPPED, State.WAITING):
            self.start()
        if not self.run_until(lambda: self.state == State.ONLINE, timeout):
            raise TimeoutError("not online within %s s (state %s)"
                               % (timeout, self.state.name))

    def close(self):
        """Stops, writes what the connection still has to say (a close
        frame) if the socket takes it at once, closes the socket and frees
        the client. Idempotent; not allowed inside a callback."""
        if self._c is None:
            return
        with self._use():
            lib.imc_client_stop(self._c)
            self._close_socket()
            self._c = None
            self._free()
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    # -- sending -----------------------------------------------------------

    def send(self, to=None, body=b"", *, group=None, content_type=None):
        """Queues a message to user `to` or to `group` (exactly one) and
        returns its client_msg_id. A str body is sent as UTF-8 text
        ("text/plain" unless content_type says otherwise), bytes as
        content_type or "application/octet-stream". The message is in the
        outbox (the store) when this returns, and goes out at once when
        online, else after the next Welcome. Allowed inside a callback.
        Raises errors.InvalidArgument (recipient, body or content type
        refused), errors.Io (the store failed)."""
        if (to is None) == (group is None):
            raise errors.InvalidArgument("send needs one of to= and group=")
        if isinstance(body, str):
            body = body.encode("utf-8")
        else:
            body = bytes(body)
            content_type = content_type or "application/octet-stream"
        with self._use(in_callback=True):
            cmid = ffi.new("char[]", lib.IMC_CLIENT_MSG_ID_LEN + 1)
            errors.check(lib.imc_client_send(
                self._c, cstr(to, "to"), cstr(group, "group"),
                ffi.from_buffer("uint8_t[]", body), len(body),
                cstr(content_type, "content_type"), cmid))
            if not self._in_callback:
                self._write()
            return ffi.string(cmid).decode("ascii")

    # -- driving -----------------------------------------------------------

    def run_until(self, cond, timeout=None):
        """Drives the client until cond() is true (returns True), timeout
        seconds pass (None: no limit; returns False) or the client is
        STOPPED (returns False). Raises the refusal (errors.Auth) once the
        client FAILED, and any exception a callback raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._use():
            while True:
                if cond():
                    return True
                st = lib.imc_client_get_state(self._c)
                if st == _FAILED:
                    raise errors.error(self._fail_reason or lib.IMC_ERR_AUTH,
                                       "the server refused the token")
                if st == _STOPPED:
                    return False
                left = None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                self._turn(left)
                self._reraise()

    def messages(self, timeout=None):
        """Yields incoming messages (Message) as they arrive, driving the
        client meanwhile. Ends when timeout seconds pass without a message
        (None: never) or the client is stopped. Needs a Client without
        on_message."""
        if self._on_message is not None:
            raise RuntimeError("messages() reads the queue that on_message "
                               "replaces")
        while True:
            if not self._inbox and \
                    not self.run_until(lambda: self._inbox, timeout):
                return
            yield self._inbox.popleft()

    def statuses(self, timeout=None):
        """Yields what becomes of sends (Status, or Refused) as it
        arrives, like messages(). Needs a Client without on_status and
        on_refused."""
        if self._on_status is not None or self._on_refused is not None:
            raise RuntimeError("statuses() reads the queue that on_status "
                               "and on_refused replace")
        while True:
            if not self._outcomes and \
                    not self.run_until(lambda: self._outcomes, timeout):
                return
            yield self._outcomes.popleft()

    def wait_status(self, client_msg_id, timeout=10.0):
        """Drives the client until the DeliveryStatus of client_msg_id
        arrives and returns it (Status); other outcomes stay queued. Raises
        the refusal's error (with .client_msg_id) if the server refused the
        send, TimeoutError after timeout seconds."""
        found = []

        def take():
            for o in self._outcomes:
                if o.client_msg_id == client_msg_id:
                    self._outcomes.remove(o)
                    found.append(o)
                    return True
            return False

        if not self.run_until(take, timeout):
            raise TimeoutError("no delivery status for %s within %s s"
                               % (client_msg_id, timeout))
        if isinstance(found[0], Refused):
            raise found[0].error
        return found[0]

    # -- HTTP: history ------------------------------------------------------

    def history(self, conversation_id, after_seq=0):
        """The messages of a conversation ("p:<a>:<b>" or "g:<group>") with
        seq > after_seq, read page by page over HTTP, as a list of Message.
        Nothing is recorded in the store. Raises errors.Forbidden (not a
        member), errors.InvalidArgument (a bad conversation id), OSError."""
        got = []

        @ffi.callback("void(void *, const imc_msg *)")
        def page_msg(ud, m):
            got.append(Message.from_c(m, lib.IMC_CLIENT_MSG_HISTORY))

        self._history_pages(conversation_id, after_seq, page_msg)
        return got

    def repair_gap(self, conversation_id, after_seq):
        """Reads the history after after_seq (a message's last_seq when it
        has .gap) into the inbox: messages not surfaced before arrive like
        pushed ones (on_message or messages()), with .history true. Same
        errors as history()."""
        self._history_pages(conversation_id, after_seq, ffi.NULL)

    def _history_pages(self, conversation_id, after_seq, cb):
        req, n = ffi.new("const uint8_t **"), ffi.new("size_t *")
        nxt = ffi.new("uint64_t *")
        with self._use():
            while True:
                errors.check(lib.imc_client_history_request(
                    self._c, cstr(conversation_id, "conversation_id"),
                    after_seq, req, n))
                answer = self._http(ffi.buffer(req[0], n[0])[:])
                rv = errors.check(lib.imc_client_history_response(
                    self._c, ffi.from_buffer("uint8_t[]", answer),
                    len(answer), cb, ffi.NULL, nxt))
                if rv == 0 or self._exc is not None:
                    return
                after_seq = nxt[0]

    # -- callbacks (through _dispatch) ---------------------------------------

    def _got_state(self, state, reason):
        if state == _FAILED:
            self._fail_reason = reason
        if self._on_state is not None:
            self._on_state(State(state), errors.error(reason) if reason
                           else None)

    def _got_message(self, m, flags, last_seq):
        msg = Message.from_c(m, flags, last_seq)
        if self._on_message is not None:
            self._on_message(msg)
        else:
            self._inbox.append(msg)

    def _got_ack(self, ack):
        if self._on_ack is not None:
            self._on_ack(ack)

    def _got_status(self, status):
        if self._on_status is not None:
            self._on_status(status)
        else:
            self._outcomes.append(status)

    def _got_refusal(self, client_msg_id, code, message):
        err = errors.error(code, message)
        err.client_msg_id = client_msg_id
        refused = Refused(client_msg_id, err)
        if self._on_refused is not None:
            self._on_refused(refused)
        else:
            self._outcomes.append(refused)

    # -- the loop ---------------------------------------------------------

    def _turn(self, max_wait):
        """One turn: at most max_wait seconds (None: until the next event
        or deadline)."""
        c = self._c
        st = lib.imc_client_get_state(c)
        if st == _ONLINE and lib.imc_client_want_sync(c) and \
                not self._sync_failed:
            self._sync()
            return  # the caller looks at what the sync surfaced first
        if st != _ONLINE:
            self._sync_failed = False  # try again after the next Welcome
        if self._sock is not None and (
                st in (_WAITING, _STOPPED, _FAILED) or
                (st == _CONNECTING and self._sock_connected)):
            self._close_socket()
        if st == _CONNECTING and self._sock is None:
            self._open()

        wait = lib.imc_client_next_timeout_ms(c)
        wait = None if wait < 0 else wait / 1000.0
        if max_wait is not None:
            wait = max_wait if wait is None else min(wait, max_wait)
        if self._sock is None and wait is None:
            return  # stopped or failed: nothing will happen
        if self._sock is not None:
            ev = selectors.EVENT_READ
            if not self._sock_connected:
                ev = selectors.EVENT_WRITE
            elif lib.imc_client_want_write(c):
                ev |= selectors.EVENT_WRITE
            self._sel.modify(self._sock, ev)
        for key, events in self._sel.select(wait):
            if key.fileobj is self._wake_r:
                self._drain_wake()
            elif key.fileobj is not self._sock:
                continue  # closed by a callback or signal handler meanwhile
            elif not self._sock_connected:
                err = self._sock.getsockopt(socket.SOL_SOCKET,
                                            socket.SO_ERROR)
                if err:
                    _log.info("connect to %s:%d: %s", self._host, self._port,
                              errno.errorcode.get(err, err))
                    self._drop(lib.IMC_ERR_IO)
                else:
                    self._sock_connected = True
                    lib.imc_client_connected(c)
            elif events & selectors.EVENT_READ:
                self._read()
        self._write()
        if lib.imc_client_next_timeout_ms(c) == 0:
            lib.imc_client_on_timeout(c)

    def _drain_wake(self):
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def _open(self):
        try:
            fam, typ, proto, _, addr = socket.getaddrinfo(
                self._host, self._port, type=socket.SOCK_STREAM)[0]
            s = socket.socket(fam, typ, proto)
        except OSError as e:
            _log.info("connect to %s:%d: %s", self._host, self._port, e)
            lib.imc_client_disconnected(self._c, lib.IMC_ERR_IO)
            return
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = s.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            _log.info("connect to %s:%d: %s", self._host, self._port,
                      errno.errorcode.get(err, err))
            s.close()
            lib.imc_client_disconnected(self._c, lib.IMC_ERR_IO)
            return
        self._sock = s
        self._sock_connected = err == 0
        self._sel.register(s, selectors.EVENT_WRITE)
        if err == 0:
            lib.imc_client_connected(self._c)

    def _read(self):
        try:
            data = self._sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(lib.IMC_ERR_IO)
            return
        if not data:
            self._drop(lib.IMC_ERR_CLOSED)
            return
        lib.imc_client_recv(self._c, ffi.from_buffer("uint8_t[]", data),
                            len(data))

    def _write(self):
        c = self._c
        while self._sock is not None and self._sock_connected and \
                lib.imc_client_want_write(c):
            n = lib.imc_client_output(c, self._outp)
            try:
                w = self._sock.send(ffi.buffer(self._outp[0], n))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(lib.IMC_ERR_IO)
                return
            lib.imc_client_output_consume(c, w)

    def _drop(self, reason):
        """The connection failed or ended: close it and tell the client."""
        self._close_socket(flush=False)
        lib.imc_client_disconnected(self._c, reason)

    def _close_socket(self, flush=True):
        s, self._sock = self._sock, None
        if s is None:
            return
        if flush and self._sock_connected:
            n = lib.imc_client_output(self._c, self._outp)
            if n:
                try:  # best effort, like the C hosts: a close frame
                    s.send(ffi.buffer(self._outp[0], n))
                except OSError:
                    pass
        self._sock_connected = False
        self._sel.unregister(s)
        s.close()

    # -- HTTP: offline sync -------------------------------------------------

    def _http(self, request):
        """Sends request on a new connection to the gateway and returns
        the answer: every byte up to EOF (the requests the library makes
        say Connection: close, and the gateway closes after answering)."""
        chunks, total = [], 0
        with socket.create_connection((self._host, self._port),
                                      timeout=self._http_timeout) as s:
            s.sendall(request)
            while True:
                d = s.recv(_READ_SIZE)
                if not d:
                    return b"".join(chunks)
                total += len(d)
                if total > _HTTP_MAX:
                    raise errors.TooLarge("HTTP answer over %d bytes"
                                          % _HTTP_MAX)
                chunks.append(d)

    def _sync(self):
        """The offline sync, page by page, to its end. A failure is logged
        and tried again after the next Welcome (as the C CLI does)."""
        req, n = ffi.new("const uint8_t **"), ffi.new("size_t *")
        while True:
            errors.check(lib.imc_client_sync_request(self._c, req, n))
            try:
                answer = self._http(ffi.buffer(req[0], n[0])[:])
            except (OSError, errors.ImchatError) as e:
                _log.warning("offline sync: %s", e)
                self._sync_failed = True
                return
            rv = lib.imc_client_sync_response(
                self._c, ffi.from_buffer("uint8_t[]", answer), len(answer))
            if self._exc is not None or rv == 0:
                return
            if rv < 0:
                _log.warning("offline sync: %s", errors.error(rv))
                self._sync_failed = True
                return

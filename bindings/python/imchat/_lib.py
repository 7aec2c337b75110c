"""cffi in ABI mode: the declarations of _cdef and libimchat, dlopen'ed.

IMCHAT_LIB names the library file (the build tree's libimchat.so, as the
tests set it); without it the system loader finds the installed
libimchat.so.0 (LD_LIBRARY_PATH, ld.so.cache). IMCHAT_SERVER_LIB does the
same for libimchat-server.so, which is loaded only when a Server is made.
"""

import os
import threading

import cffi

from . import _cdef

ffi = cffi.FFI()
ffi.cdef(_cdef.source())


def _open(env, soname):
    path = os.environ.get(env) or soname
    try:
        return ffi.dlopen(path)
    except OSError as e:
        raise ImportError(
            "imchat: cannot load %s (%s); install it or set %s to the path "
            "of the library" % (path, e, env)) from e


lib = _open("IMCHAT_LIB", "libimchat.so.0")
_server_lib = []
_server_lib_lock = threading.Lock()


def server_lib():
    """libimchat-server (IMCHAT_SERVER_LIB, else libimchat-server.so.0),
    loaded on first use: only imchat.Server needs it."""
    with _server_lib_lock:
        if not _server_lib:
            _server_lib.append(_open("IMCHAT_SERVER_LIB",
                                     "libimchat-server.so.0"))
        return _server_lib[0]


def cstr(s, what):
    """s as NUL-terminated bytes for a const char * argument; None stays
    None (NULL). A NUL inside s would silently cut the string in C, so it
    is refused."""
    if s is None:
        return ffi.NULL
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    if b"\0" in b:
        from .errors import InvalidArgument
        raise InvalidArgument("%s contains a NUL character" % what)
    return b


def pystr(p):
    """A const char * from C as str ("" for NULL)."""
    return "" if p == ffi.NULL else ffi.string(p).decode("utf-8", "replace")

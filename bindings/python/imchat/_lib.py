"""cffi in ABI mode: the declarations of _cdef and libimchat, dlopen'ed.

IMCHAT_LIB names the library file (the build tree's libimchat.so, as the
tests set it); without it the system loader finds the installed
libimchat.so.0 (LD_LIBRARY_PATH, ld.so.cache).
"""

import os

import cffi

from . import _cdef

ffi = cffi.FFI()
ffi.cdef(_cdef.source())


def _open():
    path = os.environ.get("IMCHAT_LIB") or "libimchat.so.0"
    try:
        return ffi.dlopen(path)
    except OSError as e:
        raise ImportError(
            "imchat: cannot load %s (%s); install libimchat or set IMCHAT_LIB "
            "to the path of libimchat.so" % (path, e)) from e


lib = _open()


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

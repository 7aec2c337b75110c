"""A JWT key source (imc_keysrc_vtbl, backend.h) implemented in Python.

A gateway that cannot verify a token with its configured keys asks its key
source for the key named by the token's header (alg, kid), the way a JWKS
fetcher would. KeySource fills the vtable with a cffi callback that calls
lookup(alg, kid) and completes the request before returning.
"""

import logging

from . import errors
from ._lib import ffi, lib, pystr

_log = logging.getLogger("imchat.keysrc")


@ffi.callback("int(void *, const char *, const char *, imc_key_cb, void *)")
def _cb_lookup(ud, alg, kid, done, done_ud):
    ks = ffi.from_handle(ud)
    alg_s = pystr(alg)
    try:
        key = ks.lookup(alg_s, pystr(kid))
    except errors.ImchatError as e:
        return e.code if e.code is not None and e.code < 0 \
            else lib.IMC_ERR_UNAVAILABLE
    except Exception:  # noqa: BLE001 - cannot cross the C frames
        _log.exception("key source lookup(%r) failed", alg_s)
        return lib.IMC_ERR_UNAVAILABLE
    if key is None:
        done(done_ud, lib.IMC_ERR_NOT_FOUND, ffi.NULL, ffi.NULL, 0)
        return 0
    key = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    done(done_ud, 0, alg, ffi.from_buffer("uint8_t[]", key), len(key))
    return 0


class KeySource:
    """A key source for imc_gateway_options_set_keysrc (or any C object
    that takes an imc_keysrc_vtbl): pass .vtable and .ud, and keep this
    object alive as long as the C object uses it (the C side borrows ud).

    Override lookup, or pass a function lookup(alg, kid) returning the key
    for alg ("HS256": the shared secret; "RS256"/"ES256": a PEM public key)
    as bytes or str, or None when there is none (the token is refused).
    Raising an ImchatError refuses the lookup with its code; another
    exception is logged and reported as IMC_ERR_UNAVAILABLE. lookup runs
    on the thread that drives the C object, inside its call.
    """

    def __init__(self, lookup=None):
        if lookup is not None:
            self.lookup = lookup
        self._handle = ffi.new_handle(self)
        self.vtable = ffi.new("imc_keysrc_vtbl *", {
            "struct_size": ffi.sizeof("imc_keysrc_vtbl"),
            "lookup": _cb_lookup})

    @property
    def ud(self):
        """The user pointer to register with .vtable."""
        return self._handle

    def lookup(self, alg, kid):
        """The key for alg and kid (kid may be ""), or None."""
        return None

"""HS256 tokens for the gateway, signed by imc_jwt_sign_hs256 (jwt.h)."""

import time

from . import errors
from ._lib import cstr, ffi, lib


def sign_token(secret, user, device=None, *, issuer=None, audience=None,
               ttl=86400, iat=None):
    """An HS256 JWT for user (claim sub), signed with secret (str or bytes).

    device sets the did claim; issuer and audience the iss and aud claims.
    The token is valid from iat (Unix seconds, default now) for ttl seconds.
    Raises errors.InvalidArgument for an empty secret, an invalid user or
    device id, or an issuer or audience the library refuses.
    """
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if iat is None:
        iat = int(time.time())
    out = ffi.new("char[]", lib.IMC_JWT_SIGN_MAX)
    rv = lib.imc_jwt_sign_hs256(
        ffi.from_buffer("uint8_t[]", key), len(key), cstr(user, "user"),
        cstr(device, "device"), cstr(issuer, "issuer"),
        cstr(audience, "audience"), iat, iat + ttl, out, lib.IMC_JWT_SIGN_MAX)
    errors.check(rv)
    return ffi.string(out, rv).decode("ascii")

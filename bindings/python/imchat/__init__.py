"""Python binding of libimchat (cffi, ABI mode).

    import imchat
    token = imchat.sign_token(secret, "alice")
    with imchat.Client("127.0.0.1:8082", token) as c:
        c.connect()
        c.send("bob", "hello")
        for msg in c.messages(timeout=5):
            print(msg.from_user, msg.text)

See bindings/python/README.md.
"""

from . import errors
from ._lib import ffi, lib, pystr
from .client import Client
from .errors import ImchatError
from .keysrc import KeySource
from .server import Server
from .token import sign_token
from .types import DeliveryState, Message, Refused, SendAck, State, Status

# ffi and lib: the raw declarations of _cdef, for what the classes do not
# wrap (e.g. handing a KeySource to an imc_gateway).
__all__ = ["Client", "DeliveryState", "ImchatError", "KeySource", "Message",
           "Refused", "SendAck", "Server", "State", "Status", "errors", "ffi",
           "lib", "sign_token", "version"]


def version():
    """The version of the loaded libimchat (imc_version)."""
    return pystr(lib.imc_version())



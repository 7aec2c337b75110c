"""The values a Client hands out: states, messages, delivery outcomes."""

import enum
from dataclasses import dataclass

from ._lib import ffi, lib, pystr
from .errors import ImchatError

# imc_client_state without its prefix: State.ONLINE is IMC_CLIENT_ONLINE.
State = enum.IntEnum("State", {
    k[len("IMC_CLIENT_"):]: v
    for k, v in sorted(ffi.typeof("imc_client_state").relements.items(),
                       key=lambda kv: kv[1])}, module=__name__)
State.__doc__ = "Where a client's connection stands (imc_client_state)."


class DeliveryState(enum.IntEnum):
    """What a DeliveryStatus says of a sent message (imc_delivery_state)."""

    DELIVERED = lib.IMC_DELIVERED  # a device of the recipient ACKed it
    STORED = lib.IMC_STORED        # kept for the recipient's offline sync


def _has(m, member):
    """IMC_HAS_MEMBER: whether the library's imc_msg reaches member."""
    field = dict(ffi.typeof("imc_msg").fields)[member]
    return m.struct_size >= ffi.offsetof("imc_msg", member) + \
        ffi.sizeof(field.type)


def _str(m, member):
    return pystr(getattr(m, member)) if _has(m, member) else ""


@dataclass(frozen=True)
class Message:
    """A message surfaced by the client (imc_msg plus its flags)."""

    msg_id: str
    conversation_id: str
    seq: int
    from_user: str
    to_user: str        # "" for a group message
    group_id: str       # "" for a 1:1 message
    body: bytes
    content_type: str
    sent_at_ms: int
    client_msg_id: str
    from_device: str
    flags: int = 0      # IMC_CLIENT_MSG_* bits
    last_seq: int = 0   # the conversation's highest seq known before it

    @property
    def text(self):
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8")

    @property
    def offline(self):
        """It came from the offline sync."""
        return bool(self.flags & lib.IMC_CLIENT_MSG_OFFLINE)

    @property
    def history(self):
        """It came from a history page."""
        return bool(self.flags & lib.IMC_CLIENT_MSG_HISTORY)

    @property
    def gap(self):
        """Its seq is above last_seq + 1: messages before it are missing."""
        return bool(self.flags & lib.IMC_CLIENT_MSG_GAP)

    @classmethod
    def from_c(cls, m, flags=0, last_seq=0):
        """Copies an imc_msg (valid only during a callback)."""
        body = b""
        if _has(m, "body_len") and m.body_len and m.body != ffi.NULL:
            body = ffi.buffer(m.body, m.body_len)[:]
        return cls(
            msg_id=_str(m, "msg_id"),
            conversation_id=_str(m, "conversation_id"),
            seq=m.seq if _has(m, "seq") else 0,
            from_user=_str(m, "from_user"),
            to_user=_str(m, "to_user"),
            group_id=_str(m, "group_id"),
            body=body,
            content_type=_str(m, "content_type"),
            sent_at_ms=m.sent_at_ms if _has(m, "sent_at_ms") else 0,
            client_msg_id=_str(m, "client_msg_id"),
            from_device=_str(m, "from_device"),
            flags=flags,
            last_seq=last_seq)


@dataclass(frozen=True)
class Status:
    """A DeliveryStatus for a send: it has left the outbox."""

    client_msg_id: str
    msg_id: str
    state: DeliveryState
    user_id: str  # the recipient, "" for a group


@dataclass(frozen=True)
class SendAck:
    """The server accepted a send: it has a msg_id and a seq."""

    client_msg_id: str
    msg_id: str
    conversation_id: str
    seq: int


@dataclass(frozen=True)
class Refused:
    """The server refused a send for good; it has left the outbox.
    error is the ImchatError of the code (errors.Forbidden, ...)."""

    client_msg_id: str
    error: ImchatError

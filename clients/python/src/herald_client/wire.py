"""MessagePack framing of the herald client protocol (PROTOCOL.md §1.3, §1.4)."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import msgpack

SUBSCRIBE = 1
UNSUBSCRIBE = 2
PING = 3
REFRESH = 4
PUBLISH = 5

PUBLICATION = 16
REPLY = 17
ERROR = 18

MAX_ID = 0xFFFFFFFF


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def subscribe(id: int, topic: str, since: Optional[int] = None, epoch: Optional[str] = None) -> bytes:
    if since is None and epoch is None:
        return _pack([SUBSCRIBE, id, topic])
    opts = {}
    if since is not None:
        opts["since"] = since
    if epoch is not None:
        opts["epoch"] = epoch
    return _pack([SUBSCRIBE, id, topic, opts])


def unsubscribe(id: int, topic: str) -> bytes:
    return _pack([UNSUBSCRIBE, id, topic])


def ping(id: int) -> bytes:
    return _pack([PING, id])


def refresh(id: int, token: str) -> bytes:
    return _pack([REFRESH, id, token])


def publish(id: int, topic: str, payload: Union[bytes, bytearray, memoryview]) -> bytes:
    return _pack([PUBLISH, id, topic, bytes(payload)])


class MalformedMessage(ValueError):
    """A gateway message that is not one of PUBLICATION, REPLY, ERROR."""


def decode(data: bytes) -> Tuple:
    """Decode one gateway message into a tuple:

    * ``(PUBLICATION, topic, seq, payload)``
    * ``(REPLY, id, result_dict)``
    * ``(ERROR, id, code, message)``

    Extra trailing elements are ignored (forward compatibility).
    """
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several types
        raise MalformedMessage(f"not MessagePack: {e}") from None
    if not isinstance(msg, (list, tuple)) or not msg or not isinstance(msg[0], int):
        raise MalformedMessage("not an array with a type code")
    t = msg[0]
    if t == PUBLICATION and len(msg) >= 4:
        _, topic, seq, payload = msg[:4]
        if isinstance(topic, str) and isinstance(seq, int) and isinstance(payload, (bytes, bytearray)):
            return (PUBLICATION, topic, seq, bytes(payload))
    elif t == REPLY and len(msg) >= 3:
        _, id, result = msg[:3]
        if isinstance(id, int):
            return (REPLY, id, result if isinstance(result, dict) else {})
    elif t == ERROR and len(msg) >= 4:
        _, id, code, message = msg[:4]
        if isinstance(id, int) and isinstance(code, int):
            return (ERROR, id, code, message if isinstance(message, str) else str(message))
    raise MalformedMessage(f"unexpected message type {t}")

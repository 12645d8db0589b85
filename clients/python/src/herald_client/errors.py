"""Errors raised by the herald client.

Every error is a :class:`HeraldClientError`. Its ``code`` is

* an ``int`` for an ERROR the gateway sent (:class:`HeraldError`: 400, 401,
  403, 409, 413, 429, 500, 503, see PROTOCOL.md §1.7);
* a ``str`` for the client's own errors: ``"not_connected"``,
  ``"connection_lost"``, ``"closed"``, ``"unauthorized"``, ``"timeout"``,
  ``"already_subscribed"`` (the same strings as the TypeScript client's
  ``HeraldError.code``).
"""

from __future__ import annotations

from typing import Optional, Union

__all__ = [
    "HeraldClientError",
    "HeraldError",
    "NotConnected",
    "ConnectionLost",
    "AlreadySubscribed",
    "ClientClosed",
    "Unauthorized",
    "Timeout",
]


class HeraldClientError(Exception):
    """Base class of every error of this package."""

    code: Union[int, str] = "error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class HeraldError(HeraldClientError):
    """The gateway answered a request with ERROR ``[18, id, code, message]``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f"{self.code} {self.message}"

    def __repr__(self) -> str:
        return f"HeraldError({self.code!r}, {self.message!r})"


class NotConnected(HeraldClientError):
    """The request needs an open connection and there is none: PUBLISH and
    PING are never queued."""

    code = "not_connected"


class ConnectionLost(NotConnected):
    """The connection ended after the request was sent and before its reply
    (a PUBLISH may or may not have been stored)."""

    code = "connection_lost"


class AlreadySubscribed(HeraldClientError):
    """``subscribe()`` for a topic this client is already subscribed to."""

    code = "already_subscribed"


class Timeout(HeraldClientError):
    """No reply (or no connection) within the time allowed."""

    code = "timeout"


class ClientClosed(HeraldClientError):
    """The client is closed (state ``closed``) and will not reconnect.

    ``reason`` is the reason of the ``closed`` state event: ``"client"``
    (``close()`` was called), ``"unauthorized"``, ``"disconnected"``,
    ``"protocol"`` or ``"refused"``; ``close_code`` the close code or
    handshake status that ended it, if any.
    """

    code = "closed"

    def __init__(self, reason: str = "client", close_code: Optional[int] = None, message: str = "") -> None:
        super().__init__(message or f"client closed ({reason})")
        self.reason = reason
        self.close_code = close_code


class Unauthorized(ClientClosed):
    """The gateway refused the token (close 4001 or handshake 401) and there
    is no ``get_token`` to ask for a new one, or the new one was refused too."""

    code = "unauthorized"

    def __init__(self, reason: str = "unauthorized", close_code: Optional[int] = None, message: str = "") -> None:
        super().__init__(reason, close_code, message or "token refused")


def closed_error(reason: str, close_code: Optional[int]) -> ClientClosed:
    """The error that matches a terminal ``closed`` reason."""
    if reason == "unauthorized":
        return Unauthorized(reason, close_code)
    return ClientClosed(reason, close_code)

"""The reconnect table of clients/README.md, as pure functions.

Nothing here touches a socket, a clock or a global random generator:

* :func:`decide` maps what ended a connection (or a connection attempt) to a
  :class:`Decision`: reconnect or not, how to wait, which token, and the
  reason reported in the ``reconnecting`` / ``closed`` state event;
* :func:`next_wait` turns a decision and the attempt counter into a delay
  and the next counter value, with the random source passed in;
* :func:`backoff_delay` and :func:`slow_delay` are the two waits.
"""

from __future__ import annotations

import random as _random
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

__all__ = [
    "Outcome",
    "Decision",
    "decide",
    "next_wait",
    "backoff_delay",
    "slow_delay",
    "OPEN_RESETS_AFTER_S",
    "SLOW_MIN_S",
    "SLOW_MAX_S",
]

#: A connection that stayed open this long resets the attempt counter.
OPEN_RESETS_AFTER_S = 10.0
#: "slow" waits a random time in [SLOW_MIN_S, SLOW_MAX_S].
SLOW_MIN_S = 15.0
SLOW_MAX_S = 30.0

# wait kinds
BACKOFF = "backoff"
SLOW = "slow"
NOW = "now"

# close codes the client caused itself: the gateway refuses what it sent
_PROTOCOL_CODES = frozenset({1002, 1003, 1007, 1009})


@dataclass(frozen=True)
class Outcome:
    """What ended a connection or a connection attempt.

    ``kind`` is one of

    * ``"lost"``: network error, EOF, no close frame (1006), no pong, a
      handshake that failed without an HTTP status;
    * ``"close"``: the gateway sent a close frame with ``code``;
    * ``"handshake"``: the upgrade was answered with HTTP ``code``;
    * ``"token_error"``: ``get_token()`` failed while preparing an attempt;
    * ``"client"``: the application called ``close()``.
    """

    kind: str
    code: Optional[int] = None

    @classmethod
    def lost(cls) -> "Outcome":
        return cls("lost")

    @classmethod
    def close(cls, code: Optional[int]) -> "Outcome":
        if code is None or code == 1006:
            return cls("lost", 1006)
        return cls("close", code)

    @classmethod
    def handshake(cls, status: int) -> "Outcome":
        return cls("handshake", status)

    @classmethod
    def token_error(cls) -> "Outcome":
        return cls("token_error")

    @classmethod
    def client(cls) -> "Outcome":
        return cls("client")


@dataclass(frozen=True)
class Decision:
    """One row of the table.

    ``reconnect``: whether to connect again. When it is false the client goes
    to ``closed`` with ``reason`` (``client``, ``unauthorized``,
    ``disconnected``, ``protocol``, ``refused``). When it is true, ``reason``
    is reported with the ``reconnecting`` event, ``wait`` is ``"backoff"``,
    ``"slow"`` or ``"now"``, ``new_token`` says whether to ask ``get_token``
    for a new token first, and ``reset_attempts`` whether the attempt counter
    starts again at 0.
    """

    reconnect: bool
    reason: str
    wait: Optional[str] = None
    new_token: bool = False
    reset_attempts: bool = False


def _retry(reason: str, wait: str, new_token: bool = False, reset: bool = False) -> Decision:
    return Decision(True, reason, wait, new_token, reset)


def _stop(reason: str) -> Decision:
    return Decision(False, reason)


def decide(outcome: Outcome, *, has_get_token: bool, consecutive_401s: int = 0) -> Decision:
    """The reconnect table (clients/README.md), one row per branch.

    ``consecutive_401s`` is the number of handshakes answered 401 right
    before this outcome (no open connection and no other failure between).
    """
    kind, code = outcome.kind, outcome.code

    if kind == "client":
        return _stop("client")

    if kind == "lost":
        return _retry("connection_lost", BACKOFF)

    if kind == "token_error":  # not a row of the table: try get_token again later
        return _retry("token_error", BACKOFF, new_token=True)

    if kind == "close":
        if code == 1000:
            return _retry("server_closed", BACKOFF)
        if code == 1001:  # going away, or (cluster) topic stream interrupted
            return _retry("going_away", BACKOFF)
        if code == 4008:
            return _retry("slow_consumer", BACKOFF)
        if code == 4029:
            return _retry("rate_limited", SLOW)
        if code == 4001:
            if has_get_token:
                return _retry("token_expired", NOW, new_token=True, reset=True)
            return _stop("unauthorized")
        if code == 4003:
            if has_get_token:
                return _retry("disconnected", SLOW, new_token=True)
            return _stop("disconnected")
        if code in _PROTOCOL_CODES:
            return _stop("protocol")
        if code == 1008:
            return _stop("refused")
        # 1011, 1012, 1013, 1014 and any other code
        return _retry("server_closed", BACKOFF)

    if kind == "handshake":
        if code == 401:
            if has_get_token and consecutive_401s == 0:
                return _retry("unauthorized", NOW, new_token=True)
            return _stop("unauthorized")
        if code in (400, 403, 404):
            return _stop("refused")
        if code == 429:
            return _retry("rate_limited", SLOW)
        if code == 503:
            return _retry("unavailable", BACKOFF)
        # Not in the table (e.g. 500/502/504 from a proxy in front of the
        # gateway): treated like a lost connection.
        return _retry(f"http_{code}", BACKOFF)

    raise ValueError(f"unknown outcome kind {kind!r}")


def backoff_delay(
    attempt: int,
    base: float = 0.25,
    cap: float = 30.0,
    rand: Callable[[], float] = _random.random,
) -> float:
    """Exponential backoff with full jitter: a random time in
    ``[0, min(cap, base * 2**attempt)]``. ``rand()`` returns a float in [0, 1)."""
    if attempt < 0:
        attempt = 0
    # 2**64 * base is far beyond any cap; avoids building huge integers
    ceiling = min(cap, base * (2.0 ** min(attempt, 64)))
    return rand() * ceiling


def slow_delay(rand: Callable[[], float] = _random.random) -> float:
    """A random time in ``[SLOW_MIN_S, SLOW_MAX_S]``."""
    return SLOW_MIN_S + rand() * (SLOW_MAX_S - SLOW_MIN_S)


def next_wait(
    decision: Decision,
    attempt: int,
    *,
    opened_for: Optional[float] = None,
    base: float = 0.25,
    cap: float = 30.0,
    rand: Callable[[], float] = _random.random,
) -> Tuple[float, int]:
    """The delay before the next attempt and the attempt counter after it.

    ``attempt`` is the counter before this decision; ``opened_for`` how long
    the connection that just ended had been open (``None`` if the attempt
    never opened). A connection open for :data:`OPEN_RESETS_AFTER_S` or more
    resets the counter first, so a server that accepts and closes at once
    (4008 in a loop) still backs off.
    """
    if not decision.reconnect:
        raise ValueError("no wait for a decision that does not reconnect")
    if opened_for is not None and opened_for >= OPEN_RESETS_AFTER_S:
        attempt = 0
    if decision.reset_attempts:
        attempt = 0
    # every attempt after a failure counts (4001's reset excepted)
    following = 0 if decision.reset_attempts else attempt + 1
    if decision.wait == NOW:
        return 0.0, following
    if decision.wait == SLOW:
        return slow_delay(rand), following
    return backoff_delay(attempt, base, cap, rand), following

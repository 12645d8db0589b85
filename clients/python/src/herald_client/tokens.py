"""Reading a JWT's lifetime (without verifying it) and choosing when to refresh.

The client never checks a token's signature: the gateway does. It only
reads ``exp`` (and ``iat``, when present) to send REFRESH in time.
"""

from __future__ import annotations

import base64
import json
from typing import Optional, Tuple

__all__ = [
    "token_times",
    "refresh_at",
    "refresh_delay",
    "expires_within",
    "REFRESH_FRACTION",
    "REFRESH_MARGIN_S",
    "MIN_REFRESH_DELAY_S",
    "RENEW_BEFORE_CONNECT_S",
]

#: REFRESH at this fraction of the token's lifetime ...
REFRESH_FRACTION = 0.8
#: ... and at least this long before ``exp``.
REFRESH_MARGIN_S = 5.0
#: ... but never sooner than this from now (a token source that hands out
#: tokens about to expire must not make the client spin).
MIN_REFRESH_DELAY_S = 1.0
#: Before every connection attempt (with ``get_token``), a token that
#: expires within this many seconds is replaced first.
RENEW_BEFORE_CONNECT_S = 30.0


def token_times(token: Optional[str]) -> Tuple[Optional[float], Optional[float]]:
    """``(iat, exp)`` from a JWT's claims, each ``None`` when absent or when
    the token is not a readable JWT."""
    if not token or not isinstance(token, str):
        return None, None
    parts = token.split(".")
    if len(parts) != 3:
        return None, None
    body = parts[1]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        claims = json.loads(raw)
    except (ValueError, TypeError):
        return None, None
    if not isinstance(claims, dict):
        return None, None

    def num(key: str) -> Optional[float]:
        v = claims.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return float(v)

    return num("iat"), num("exp")


def refresh_at(token: Optional[str], received_at: float) -> Optional[float]:
    """The wall-clock time (seconds since the epoch) at which to replace
    ``token``: at 80% of its lifetime, and at least 5 s before ``exp``.

    The lifetime starts at ``iat`` when the token has one (and it is not in
    the future), otherwise at ``received_at``, the time the client got the
    token. ``None`` when the token has no readable ``exp``.
    """
    iat, exp = token_times(token)
    if exp is None:
        return None
    start = iat if iat is not None and iat <= received_at else received_at
    lifetime = max(0.0, exp - start)
    return min(start + REFRESH_FRACTION * lifetime, exp - REFRESH_MARGIN_S)


def refresh_delay(token: Optional[str], received_at: float, now: float) -> Optional[float]:
    """Seconds from ``now`` until REFRESH (see :func:`refresh_at`), at least
    :data:`MIN_REFRESH_DELAY_S`; ``None`` when the token has no ``exp``."""
    at = refresh_at(token, received_at)
    if at is None:
        return None
    return max(MIN_REFRESH_DELAY_S, at - now)


def expires_within(token: Optional[str], now: float, margin: float = RENEW_BEFORE_CONNECT_S) -> bool:
    """Whether ``token`` expires (its ``exp``) less than ``margin`` seconds
    after ``now`` (already expired included); ``False`` when it has no
    readable ``exp``."""
    _, exp = token_times(token)
    return exp is not None and exp - now < margin

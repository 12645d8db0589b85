"""asyncio client for the herald WebSocket push gateway (protocol herald.v1).

    async with HeraldClient("ws://127.0.0.1:8780/ws", token=jwt) as c:
        sub = await c.subscribe("demo.BTC-USD")
        async for p in sub:
            print(p.topic, p.seq, p.data)
"""

from .client import Gap, HeraldClient, Publication, StateEvent, Subscription
from .errors import (
    AlreadySubscribed,
    ClientClosed,
    ConnectionLost,
    HeraldClientError,
    HeraldError,
    NotConnected,
    Timeout,
    Unauthorized,
)
from .reconnect import Decision, Outcome, backoff_delay, decide, next_wait, slow_delay

__version__ = "0.1.0"

__all__ = [
    "HeraldClient",
    "Subscription",
    "Publication",
    "Gap",
    "StateEvent",
    "HeraldClientError",
    "HeraldError",
    "NotConnected",
    "ConnectionLost",
    "AlreadySubscribed",
    "ClientClosed",
    "Unauthorized",
    "Timeout",
    "Outcome",
    "Decision",
    "decide",
    "next_wait",
    "backoff_delay",
    "slow_delay",
]

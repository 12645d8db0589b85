"""Requests and a lost connection (clients/README.md, "No unbounded buffer"
and "Dead connections are noticed"), against the real gateway behind a TCP
relay that can stall or cut the connection."""

import asyncio

import pytest

from harness import TcpProxy, mint, wait_until
from herald_client import ClientClosed, ConnectionLost, HeraldClient, NotConnected


async def _pending(c, n):
    """Wait until ``n`` requests are waiting for their reply."""
    await wait_until(lambda: len([p for p in c._pending.values() if p.kind != "subscribe"]) == n,
                     what=f"{n} requests in flight")


async def test_publish_and_ping_in_flight_fail_with_connection_lost(herald):
    """A PUBLISH and a PING already sent when the connection drops fail with
    connection_lost (not not_connected): the app decides whether to send the
    publication again."""
    events = []
    async with TcpProxy(herald.ws_port) as proxy:
        async with HeraldClient(proxy.url, token=mint("olga"), backoff_base=0.05, backoff_max=0.1) as c:
            c.on_state(events.append)
            sub = await c.subscribe("cl.x")
            proxy.holding = True  # the frames wait in the relay: no reply can come
            pub = asyncio.ensure_future(c.publish("cl.x", b"maybe"))
            ping = asyncio.ensure_future(c.ping())
            await _pending(c, 2)
            proxy.drop_all()
            proxy.holding = False
            for task in (pub, ping):
                with pytest.raises(ConnectionLost) as e:
                    await asyncio.wait_for(task, 5)
                assert e.value.code == "connection_lost"
            assert events and events[0].state == "reconnecting" and events[0].reason == "connection_lost"

            # the client goes on: a new connection, the subscription restored
            await wait_until(lambda: c.state == "open" and sub.active, what="open again")
            seq = await c.publish("cl.x", b"again")
            assert seq == 1  # the held publication never reached the gateway
            assert (await sub.next(5)).data == b"again"


async def test_requests_while_disconnected(herald):
    """PUBLISH and PING fail at once with not_connected; SUBSCRIBE and
    UNSUBSCRIBE are kept as state and sent on the next connection."""
    async with TcpProxy(herald.ws_port) as proxy:
        async with HeraldClient(proxy.url, token=mint("pia"), backoff_base=0.05, backoff_max=0.1) as c:
            gone = await c.subscribe("wd.gone")
            kept = await c.subscribe("wd.kept")
            assert herald.stats()["subscriptions"] == 2
            proxy.refusing = True
            proxy.drop_all()
            await wait_until(lambda: c.state == "reconnecting", what="reconnecting")

            for call in (lambda: c.publish("wd.kept", b"late"), c.ping):
                with pytest.raises(NotConnected) as e:
                    await asyncio.wait_for(call(), 1)  # at once, not after a reconnect
                assert type(e.value) is NotConnected and e.value.code == "not_connected"

            await gone.unsubscribe()  # nothing to send now: it is just forgotten
            assert gone.closed
            new = asyncio.ensure_future(c.subscribe("wd.new"))
            await asyncio.sleep(0.2)
            assert not new.done()  # waits for the connection

            proxy.refusing = False
            sub_new = await asyncio.wait_for(new, 5)
            await wait_until(lambda: kept.active, what="kept restored")
            assert herald.stats()["subscriptions"] == 2  # wd.kept and wd.new, not wd.gone
            await herald.apublish("wd.gone", b"g")
            await herald.apublish("wd.kept", b"k")
            await herald.apublish("wd.new", b"n")
            assert (await kept.next(5)).data == b"k"
            assert (await sub_new.next(5)).data == b"n"
            assert c._subs.keys() == {"wd.kept", "wd.new"}


async def test_close_fails_requests_in_flight_with_closed(herald):
    """close() by the app: what waits for a reply fails with ClientClosed
    (code closed), not connection_lost, even if a reply comes during the
    closing handshake."""
    async with TcpProxy(herald.ws_port) as proxy:
        c = HeraldClient(proxy.url, token=mint("quinn"))
        await c.connect(timeout=5)
        proxy.holding = True
        pub = asyncio.ensure_future(c.publish("cc.x", b"x"))
        await _pending(c, 1)
        closing = asyncio.ensure_future(c.close())
        with pytest.raises(ClientClosed) as e:
            await asyncio.wait_for(pub, 1)
        assert e.value.code == "closed" and e.value.reason == "client"
        proxy.holding = False  # the PUBLISH reaches the gateway, its reply comes too late
        await asyncio.wait_for(closing, 5)
        assert c.state == "closed"
        with pytest.raises(ClientClosed):
            await c.ping()

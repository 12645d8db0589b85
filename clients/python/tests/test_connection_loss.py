"""Requests and a lost connection (clients/README.md, "No unbounded buffer"
and "Dead connections are noticed"), against the real gateway behind a TCP
relay that can stall or cut the connection."""

import asyncio

import pytest
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.protocol import State as WsState

from harness import TcpProxy, mint, wait_until
from herald_client import ClientClosed, ConnectionLost, HeraldClient, NotConnected, Timeout


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
            with pytest.raises(Timeout) as e:
                await c.ping(timeout=0.2)
            assert e.value.code == "timeout" and c.state == "open"
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


def test_keepalive_defaults():
    """The websockets ping is on: every 20 s, a missing pong counts as lost
    after 10 s, the close gives up after 5 more (lost within 10-20 s)."""
    c = HeraldClient("ws://127.0.0.1:1/ws", token="t0k")
    o = c._connect_options()
    assert (o["ping_interval"], o["ping_timeout"], o["close_timeout"]) == (20.0, 10.0, 5.0)
    assert o["additional_headers"] == {"Authorization": "Bearer t0k"} and o["subprotocols"] == ["herald.v1"]
    c = HeraldClient("ws://127.0.0.1:1/ws", token="t0k", ws_options={"ping_interval": 5, "ssl": None})
    o = c._connect_options()
    assert (o["ping_interval"], o["ping_timeout"], o["ssl"]) == (5, 10.0, None)


async def test_dead_connection_is_noticed(herald):
    """A connection that carries nothing any more (no close, no RST): the
    websockets ping gets no pong, the connection counts as lost (reason
    connection_lost, no close code), a PING in flight fails with
    connection_lost, and the client reconnects."""
    events = []
    ws_options = {"ping_interval": 0.5, "ping_timeout": 1.0, "close_timeout": 0.5}
    async with TcpProxy(herald.ws_port) as proxy:
        async with HeraldClient(proxy.url, token=mint("rory"), backoff_base=0.05, backoff_max=0.1,
                                ws_options=ws_options) as c:
            c.on_state(events.append)
            sub = await c.subscribe("dc.x")
            proxy.holding = True
            t0 = asyncio.get_running_loop().time()
            ping = asyncio.ensure_future(c.ping(timeout=20))  # its own timeout is not what ends it
            await wait_until(lambda: c.state == "reconnecting", timeout=10, what="reconnecting")
            took = asyncio.get_running_loop().time() - t0
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(ping, 1)
            assert [(e.state, e.reason, e.code) for e in events] == [("reconnecting", "connection_lost", None)]
            assert took < 8, took
            proxy.holding = False
            await wait_until(lambda: c.state == "open" and sub.active, what="open again")
            await herald.apublish("dc.x", b"back")
            assert (await sub.next(5)).data == b"back"


class _FakeWs:
    """A connection whose send() fails the way websockets' does."""

    def __init__(self, state):
        self.state = state
        self.sent = 0

    async def send(self, data):
        self.sent += 1
        raise WsConnectionClosed(None, None)


async def test_send_on_a_connection_that_ends_meanwhile():
    """A frame handed to a connection that then ends: connection_lost (it may
    have gone out); a connection already closing: not_connected at once,
    nothing sent."""
    c = HeraldClient("ws://127.0.0.1:1/ws", token="t")
    c._task = asyncio.get_running_loop().create_future()  # as if connect() had been called
    c._state = "open"
    c._ws = _FakeWs(WsState.OPEN)
    with pytest.raises(ConnectionLost):
        await c.publish("x.y", b"")
    assert c._pending == {}
    c._ws = _FakeWs(WsState.CLOSING)
    with pytest.raises(NotConnected) as e:
        await asyncio.wait_for(c.ping(), 1)
    assert type(e.value) is NotConnected and c._ws.sent == 0
    c._task.cancel()

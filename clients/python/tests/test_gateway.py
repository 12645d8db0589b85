"""The client against the real herald gateway."""

import asyncio
import math
import signal
import time

import pytest

from harness import TcpProxy, mint, wait_until
from herald_client.tokens import token_times
from herald_client import (
    AlreadySubscribed,
    ClientClosed,
    HeraldClient,
    HeraldError,
    NotConnected,
    Unauthorized,
)


def recorder():
    events = []
    return events, events.append


def states(events):
    return [e.state for e in events]


async def test_subscribe_publish_unsubscribe_ping(herald):
    events, on_state = recorder()
    async with HeraldClient(herald.url, token=mint("alice")) as c:
        assert c.state == "open"
        c.on_state(on_state)
        sub = await c.subscribe("rt.a")
        assert sub.last_seq == 0 and sub.epoch

        seq = await c.publish("rt.a", b"hi")
        assert seq == 1
        p = await sub.next(timeout=5)
        assert (p.topic, p.seq, p.data, p.epoch) == ("rt.a", 1, b"hi", sub.epoch)

        assert await herald.apublish("rt.a", b"\x00\xff") == 2
        p = await sub.next(timeout=5)
        assert (p.seq, p.data) == (2, b"\x00\xff")

        rtt = await c.ping()
        assert 0 < rtt < 5

        # a callback subscription beside the iterator
        got = []
        await c.subscribe("rt.b", callback=got.append)
        with pytest.raises(AlreadySubscribed):
            await c.subscribe("rt.b")
        await herald.apublish("rt.b", b"cb")
        await wait_until(lambda: got, what="callback")
        assert (got[0].topic, got[0].seq, got[0].data) == ("rt.b", 1, b"cb")

        assert herald.stats()["subscriptions"] == 2
        await sub.unsubscribe()
        assert sub.closed
        with pytest.raises(StopAsyncIteration):
            await sub.next(timeout=1)
        assert herald.stats()["subscriptions"] == 1  # the gateway forgot it too
        await herald.apublish("rt.a", b"after")
        await c.ping()
        assert states(events) == []  # no reconnect on the way

    assert c.state == "closed"
    assert events[-1].state == "closed" and events[-1].reason == "client"
    with pytest.raises(ClientClosed):
        await c.publish("rt.a", b"late")


@pytest.mark.herald(timeouts__close_ms=500)
async def test_gateway_restart_mid_stream(herald):
    events, on_state = recorder()
    gaps = []
    c = HeraldClient(herald.url, token=mint("bob"), backoff_base=0.05, backoff_max=0.3)
    c.on_state(on_state)
    await c.connect(timeout=5)
    try:
        sub = await c.subscribe("rs.x", on_gap=gaps.append)
        for i in range(1, 4):
            await herald.apublish("rs.x", b"old %d" % i)
        assert [(await sub.next(5)).seq for _ in range(3)] == [1, 2, 3]
        old_epoch = sub.epoch

        # SIGTERM: the gateway closes every session with 1001, then exits
        await asyncio.get_running_loop().run_in_executor(None, herald.stop, signal.SIGTERM)
        await wait_until(lambda: c.state == "reconnecting", what="reconnecting")
        first = next(e for e in events if e.state == "reconnecting")
        assert (first.reason, first.code) == ("going_away", 1001)
        with pytest.raises(NotConnected):
            await c.publish("rs.x", b"while down")  # never queued

        # the same ports, a new process: every topic starts over, new epoch
        await asyncio.get_running_loop().run_in_executor(None, herald.start)
        await wait_until(lambda: c.state == "open", what="open again")
        await wait_until(lambda: sub.active and sub.epoch != old_epoch, what="resubscribed")

        for i in range(1, 4):
            await herald.apublish("rs.x", b"new %d" % i)
        got = [await sub.next(5) for _ in range(3)]
        assert [(p.seq, p.data, p.epoch) for p in got] == [
            (1, b"new 1", sub.epoch), (2, b"new 2", sub.epoch), (3, b"new 3", sub.epoch)]
        # the gap came before the first publication of the new epoch
        assert len(gaps) == 1
        g = gaps[0]
        assert (g.reason, g.topic, g.last_seq, g.seq, g.epoch) == (
            "epoch_changed", "rs.x", 3, 1, sub.epoch)

        s = states(events)
        assert s[0] == "connecting" and s[1] == "open"
        assert s[2] == "reconnecting" and s[-1] == "open"
        assert set(s[2:-1]) == {"reconnecting"}  # retried while the gateway was down
    finally:
        await c.close()


async def test_recovery_after_dropped_connection(herald):
    """The network drops the connection (no close frame); publications go on
    meanwhile; the client resubscribes with since/epoch and the app sees
    1..N exactly once, with no gap."""
    n = 30
    events, on_state = recorder()
    gaps = []
    async with TcpProxy(herald.ws_port) as proxy:
        async with HeraldClient(proxy.url, token=mint("carol"), backoff_base=0.05, backoff_max=0.2) as c:
            c.on_state(on_state)
            sub = await c.subscribe("dr.x", on_gap=gaps.append)
            seen = []

            async def reader():
                async for p in sub:
                    seen.append(p.seq)
                    if p.seq == n:
                        return

            task = asyncio.ensure_future(reader())
            for i in range(1, 11):
                await herald.apublish("dr.x", b"%d" % i)
            await wait_until(lambda: len(seen) == 10, what="first 10")

            proxy.refusing = True
            proxy.drop_all()
            await wait_until(lambda: c.state == "reconnecting", what="reconnecting")
            for i in range(11, 21):  # published while the client is away
                await herald.apublish("dr.x", b"%d" % i)
            await asyncio.sleep(0.3)  # a few refused attempts
            proxy.refusing = False
            await wait_until(lambda: c.state == "open", what="open again")
            for i in range(21, n + 1):
                await herald.apublish("dr.x", b"%d" % i)
            await asyncio.wait_for(task, 5)

    assert seen == list(range(1, n + 1))
    assert gaps == []
    rec = [e for e in events if e.state == "reconnecting"]
    assert rec and rec[0].reason == "connection_lost" and rec[0].code is None
    assert states(events)[-2:] == ["open", "closed"]


@pytest.mark.herald(hub__history_size=4)
async def test_not_recovered_when_history_is_too_short(herald):
    gaps = []
    async with TcpProxy(herald.ws_port) as proxy:
        async with HeraldClient(proxy.url, token=mint("dave"), backoff_base=0.05, backoff_max=0.2) as c:
            sub = await c.subscribe("nr.x", on_gap=gaps.append)
            await herald.apublish("nr.x", b"1")
            assert (await sub.next(5)).seq == 1
            proxy.refusing = True
            proxy.drop_all()
            await wait_until(lambda: c.state == "reconnecting", what="reconnecting")
            epoch = sub.epoch
            for i in range(2, 12):  # 10 > history_size
                await herald.apublish("nr.x", b"%d" % i)
            proxy.refusing = False
            await wait_until(lambda: c.state == "open" and sub.active, what="resubscribed")
            await herald.apublish("nr.x", b"12")
            p = await sub.next(5)
    assert p.seq == 12
    assert [(g.reason, g.last_seq, g.seq, g.epoch) for g in gaps] == [("not_recovered", 1, 12, epoch)]


@pytest.mark.herald(hub__history_size=4)
async def test_gaps_in_stream_order_for_callbacks_and_iterators(herald):
    """A reconnect the history cannot cover: the gap event comes after the
    last publication before it and right before the first one after it,
    with the last seq the app got, the seq it gets next, and the epoch; for
    a callback and for an iterator that had not read anything yet."""
    log_cb, log_it = [], []

    def gap_to(log):
        return lambda g: log.append((g.reason, g.last_seq, g.seq, g.epoch))

    async with TcpProxy(herald.ws_port) as proxy:
        async with HeraldClient(proxy.url, token=mint("uma"), backoff_base=0.05, backoff_max=0.1) as c:
            cb = await c.subscribe("go.cb", callback=lambda p: log_cb.append(p.seq), on_gap=gap_to(log_cb))
            it = await c.subscribe("go.it", on_gap=gap_to(log_it))
            for i in (1, 2):
                for topic in ("go.cb", "go.it"):
                    await herald.apublish(topic, b"%d" % i)
            await wait_until(lambda: len(log_cb) == 2 and it.last_seq == 2, what="1 and 2")
            epochs = (cb.epoch, it.epoch)
            proxy.refusing = True
            proxy.drop_all()
            await wait_until(lambda: c.state == "reconnecting", what="reconnecting")
            for i in range(3, 13):  # 10 > history_size
                for topic in ("go.cb", "go.it"):
                    await herald.apublish(topic, b"%d" % i)
            proxy.refusing = False
            await wait_until(lambda: cb.active and it.active, what="resubscribed")
            assert (cb.epoch, it.epoch) == epochs
            for i in (13, 14):
                for topic in ("go.cb", "go.it"):
                    await herald.apublish(topic, b"%d" % i)
            for _ in range(4):
                log_it.append((await it.next(5)).seq)
            await wait_until(lambda: len(log_cb) == 5, what="callback")
    assert log_cb == [1, 2, ("not_recovered", 2, 13, epochs[0]), 13, 14]
    assert log_it == [1, 2, ("not_recovered", 2, 13, epochs[1]), 13, 14]


async def test_refresh_before_expiry(herald):
    """Tokens live 3 s; get_token supplies new ones, sent as REFRESH: the
    connection outlives the first token with no 4001 and no reconnect."""
    issued = []

    async def get_token():
        t = mint("erin", ttl=3)
        issued.append(t)
        return t

    first = mint("erin", ttl=3)
    first_exp = token_times(first)[1]
    events, on_state = recorder()
    c = HeraldClient(herald.url, token=first, get_token=get_token)
    c.on_state(on_state)
    await c.connect(timeout=5)
    try:
        sub = await c.subscribe("rf.x")
        while time.time() < first_exp + 1.5:
            await asyncio.sleep(0.1)
        assert c.state == "open"
        await c.ping()
        await herald.apublish("rf.x", b"still here")
        assert (await sub.next(5)).data == b"still here"
        assert len(issued) >= 2  # refreshed more than once, never reconnected
        assert c.token == issued[-1] or c.token == issued[-2]
        assert states(events) == ["connecting", "open"]
    finally:
        await c.close()


async def test_4001_without_token_source_closes_unauthorized(herald):
    events, on_state = recorder()
    token = mint("frank", exp=math.ceil(time.time()) + 2)
    c = HeraldClient(herald.url, token=token)
    c.on_state(on_state)
    await c.connect(timeout=5)
    sub = await c.subscribe("ex.x")
    await wait_until(lambda: c.state == "closed", timeout=5, what="closed")
    last = events[-1]
    assert (last.state, last.reason, last.code) == ("closed", "unauthorized", 4001)
    assert states(events) == ["connecting", "open", "closed"]
    with pytest.raises(Unauthorized):
        await sub.next(1)
    with pytest.raises(Unauthorized):
        await c.ping()
    await c.close()


async def test_4001_with_token_source_reconnects_at_once(herald):
    """get_token answers too late for REFRESH: the gateway closes with 4001
    and the client reconnects at once with a new token; the subscription
    goes on without a gap."""
    calls = []

    async def slow_get_token():
        calls.append(time.time())
        if len(calls) == 1:  # before connecting: a token that expires in 2 s
            return mint("gina", exp=math.ceil(time.time()) + 2)
        if len(calls) == 2:  # the REFRESH one: later than exp (the 4001 cancels it)
            await asyncio.sleep(4)
        return mint("gina", ttl=3600)

    events, on_state = recorder()
    gaps = []
    c = HeraldClient(herald.url, get_token=slow_get_token)
    c.on_state(on_state)
    await c.connect(timeout=5)
    try:
        sub = await c.subscribe("ex.y", on_gap=gaps.append)
        await herald.apublish("ex.y", b"1")
        assert (await sub.next(5)).seq == 1
        await wait_until(lambda: any(e.state == "reconnecting" for e in events), timeout=5, what="4001")
        await wait_until(lambda: c.state == "open" and sub.active, timeout=5, what="open again")
        await herald.apublish("ex.y", b"2")
        assert (await sub.next(5)).seq == 2
        rec = [e for e in events if e.state == "reconnecting"]
        assert [(e.reason, e.code, e.delay) for e in rec] == [("token_expired", 4001, 0.0)]
        assert gaps == []
        assert len(calls) == 3
    finally:
        await c.close()


async def test_token_expiring_within_30_s_is_replaced_before_a_reconnect(herald):
    """A lost connection keeps the token by the table, but one that expires
    within 30 s is replaced (get_token) before the attempt; one that does
    not is kept."""
    issued = []

    def get_token():
        t = mint("rita", ttl=25 if not issued else 3600)  # REFRESH of the first: after 20 s
        issued.append(t)
        return t

    events, on_state = recorder()
    async with TcpProxy(herald.ws_port) as proxy:
        async with HeraldClient(proxy.url, get_token=get_token, backoff_base=0.05, backoff_max=0.1) as c:
            c.on_state(on_state)
            sub = await c.subscribe("tk.x")
            assert issued == [c.token]
            for n in (1, 2):
                proxy.drop_all()
                await wait_until(lambda: states(events).count("open") == n and sub.active, what="open again")
            assert [(e.state, e.reason) for e in events] == [
                ("reconnecting", "connection_lost"), ("open", None)] * 2
            assert len(issued) == 2 and c.token == issued[1]  # the second drop kept the new one
            await herald.apublish("tk.x", b"x")
            assert (await sub.next(5)).data == b"x"


async def test_expired_token_costs_no_refused_handshake(herald):
    """An expired token (with get_token) is replaced before the first
    attempt too: no 401, no reconnecting event."""
    calls = []
    events, on_state = recorder()
    c = HeraldClient(herald.url, token=mint("sam", exp=int(time.time()) - 60),
                     get_token=lambda: calls.append(1) or mint("sam"))
    c.on_state(on_state)
    async with c:
        await c.ping()
    assert len(calls) == 1
    assert states(events) == ["connecting", "open", "closed"]


async def test_handshake_401_without_get_token_closes_unauthorized(herald):
    events, on_state = recorder()
    c = HeraldClient(herald.url, token=mint("hank", secret="not-the-gateway-secret-0123456789abcdef"))
    c.on_state(on_state)
    with pytest.raises(Unauthorized):
        async with c:
            pass
    assert [(e.state, e.reason, e.status) for e in events] == [
        ("connecting", None, None), ("closed", "unauthorized", 401)]
    with pytest.raises(Unauthorized):
        await c.subscribe("x.y")


async def test_handshake_401_with_get_token_retries_once_with_a_new_token(herald):
    events, on_state = recorder()
    c = HeraldClient(herald.url, token=mint("ivy", secret="wrong-secret-wrong-secret-wrong-secret"),
                     get_token=lambda: mint("ivy"))
    c.on_state(on_state)
    async with c:
        await c.ping()
    assert [(e.state, e.reason, e.status, e.delay) for e in events][:3] == [
        ("connecting", None, None, None), ("reconnecting", "unauthorized", 401, 0.0), ("open", None, None, None)]

    # a fresh token refused too: a second 401 in a row ends the client
    bad = []
    events2, on_state2 = recorder()
    c2 = HeraldClient(herald.url, token=mint("ivy", secret="wrong-secret-wrong-secret-wrong-secret"),
                      get_token=lambda: bad.append(1) or mint("ivy", secret="still-wrong-still-wrong-still-wrong"))
    c2.on_state(on_state2)
    with pytest.raises(Unauthorized):
        await c2.connect(timeout=5)
    assert len(bad) == 1
    assert [(e.state, e.reason) for e in events2] == [
        ("connecting", None), ("reconnecting", "unauthorized"), ("closed", "unauthorized")]


async def test_forbidden_subscribe_and_publish_get_403(herald):
    token = mint("jay", topics=["ok.*"], pub=["ok.chat"])
    async with HeraldClient(herald.url, token=token) as c:
        with pytest.raises(HeraldError) as e:
            await c.subscribe("secret.x")
        assert e.value.code == 403 and e.value.message == "topic not allowed"
        with pytest.raises(HeraldError) as e:  # not kept: the gateway is asked again
            await c.subscribe("secret.x")
        assert e.value.code == 403
        with pytest.raises(HeraldError) as e:
            await c.publish("ok.other", b"x")
        assert e.value.code == 403
        sub = await c.subscribe("ok.chat")
        assert await c.publish("ok.chat", b"fine") == 1
        assert (await sub.next(5)).data == b"fine"
        assert c.state == "open"  # an ERROR never closes the connection


async def test_bounded_buffer_drops_oldest_with_a_gap(herald):
    gaps = []
    async with HeraldClient(herald.url, token=mint("kim"), buffer_size=10) as c:
        sub = await c.subscribe("bb.x", on_gap=gaps.append)
        for i in range(1, 51):
            await herald.apublish("bb.x", b"%d" % i)
        await wait_until(lambda: sub.last_seq == 50, what="all 50 received")
        assert sub.dropped == 40
        got = [(await sub.next(1)).seq for _ in range(10)]
    assert got == list(range(41, 51))
    assert [(g.reason, g.last_seq, g.seq, g.dropped) for g in gaps] == [("dropped", 0, 41, 40)]


async def test_4003_without_get_token_closes_disconnected(herald):
    events, on_state = recorder()
    c = HeraldClient(herald.url, token=mint("lee"))
    c.on_state(on_state)
    await c.connect(timeout=5)
    assert await asyncio.get_running_loop().run_in_executor(None, herald.disconnect, "lee") == 1
    await wait_until(lambda: c.state == "closed", what="closed")
    assert (events[-1].reason, events[-1].code) == ("disconnected", 4003)
    with pytest.raises(ClientClosed) as e:
        await c.publish("x.y", b"")
    assert e.value.reason == "disconnected"

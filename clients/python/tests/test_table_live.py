"""Rows of the reconnect table (clients/README.md) through real sockets: the
gateway where it can produce the case, otherwise a WebSocket server that
closes with a given code or an HTTP server that refuses the upgrade with a
given status (a proxy in front of the gateway could)."""

import asyncio
import time

import pytest
from websockets.asyncio.server import serve

from harness import TcpProxy, mint, wait_until
from herald_client import ClientClosed, HeraldClient, Unauthorized


class StatusServer:
    """Answers every upgrade request with HTTP ``status``."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests = 0
        self.url = ""

    async def __aenter__(self) -> "StatusServer":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/ws"
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            writer.write(f"HTTP/1.1 {self.status} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class CloseServer:
    """Accepts every connection (subprotocol herald.v1) and closes it at once with ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.connections = 0
        self.url = ""

    async def __aenter__(self) -> "CloseServer":
        async def handler(ws):
            self.connections += 1
            await ws.close(self.code, "test")

        self._server = await serve(handler, "127.0.0.1", 0, subprotocols=["herald.v1"])
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/ws"
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()


async def first_end(c, events):
    """Connect and wait for the first reconnecting or closed event."""
    try:
        await c.connect(timeout=0.01)
    except Exception:
        pass
    await wait_until(lambda: any(e.state in ("reconnecting", "closed") for e in events), what="an end")
    return next(e for e in events if e.state in ("reconnecting", "closed"))


# status, get_token?, (state, reason), delay range
HANDSHAKE_ROWS = [
    (400, True, ("closed", "refused"), None),
    (403, True, ("closed", "refused"), None),
    (404, False, ("closed", "refused"), None),
    (401, False, ("closed", "unauthorized"), None),
    (429, False, ("reconnecting", "rate_limited"), (29.98, 30.0)),
    (503, False, ("reconnecting", "unavailable"), (1.99, 2.0)),
    (500, False, ("reconnecting", "http_500"), (1.99, 2.0)),
    (502, True, ("reconnecting", "http_502"), (1.99, 2.0)),
]


@pytest.mark.parametrize("status,with_get_token,expected,delay", HANDSHAKE_ROWS)
async def test_handshake_status_rows(status, with_get_token, expected, delay):
    events = []
    calls = []
    get_token = (lambda: calls.append(1) or mint("x")) if with_get_token else None
    async with StatusServer(status) as srv:
        # backoff: the top of [0, 2 s], so that close() comes before a second attempt
        c = HeraldClient(srv.url, token=mint("x"), get_token=get_token, backoff_base=2.0, rand=lambda: 0.999)
        c.on_state(events.append)
        ev = await first_end(c, events)
        assert (ev.state, ev.reason, ev.status, ev.code) == expected + (status, None)
        if delay is not None:
            assert delay[0] <= ev.delay <= delay[1]
        else:
            with pytest.raises(ClientClosed) as e:
                await c.ping()
            assert e.value.reason == expected[1] and e.value.close_code == status
        await c.close()
    assert calls == []  # none of these asks for a new token
    assert srv.requests == 1


async def test_handshake_401_twice_in_a_row_with_get_token():
    events = []
    calls = []
    async with StatusServer(401) as srv:
        c = HeraldClient(srv.url, token=mint("x"), get_token=lambda: calls.append(1) or mint("y"))
        c.on_state(events.append)
        with pytest.raises(Unauthorized):
            await c.connect(timeout=5)
    assert [(e.state, e.reason, e.status, e.delay) for e in events] == [
        ("connecting", None, None, None), ("reconnecting", "unauthorized", 401, 0.0),
        ("closed", "unauthorized", 401, None)]
    assert len(calls) == 1 and srv.requests == 2


# code, get_token?, (state, reason), wait: "backoff" | "slow" | "now" | None
CLOSE_ROWS = [
    (1000, False, ("reconnecting", "server_closed"), "backoff"),
    (1001, False, ("reconnecting", "going_away"), "backoff"),
    (1011, True, ("reconnecting", "server_closed"), "backoff"),
    (1012, False, ("reconnecting", "server_closed"), "backoff"),
    (1013, False, ("reconnecting", "server_closed"), "backoff"),
    (1014, False, ("reconnecting", "server_closed"), "backoff"),
    (4000, False, ("reconnecting", "server_closed"), "backoff"),
    (4008, False, ("reconnecting", "slow_consumer"), "backoff"),
    (4029, True, ("reconnecting", "rate_limited"), "slow"),
    (4001, True, ("reconnecting", "token_expired"), "now"),
    (4001, False, ("closed", "unauthorized"), None),
    (4003, True, ("reconnecting", "disconnected"), "slow"),
    (4003, False, ("closed", "disconnected"), None),
    (1002, True, ("closed", "protocol"), None),
    (1003, False, ("closed", "protocol"), None),
    (1007, False, ("closed", "protocol"), None),
    (1009, False, ("closed", "protocol"), None),
    (1008, True, ("closed", "refused"), None),
]


@pytest.mark.parametrize("code,with_get_token,expected,wait", CLOSE_ROWS)
async def test_close_code_rows(code, with_get_token, expected, wait):
    events = []
    get_token = (lambda: mint("x")) if with_get_token else None
    async with CloseServer(code) as srv:
        c = HeraldClient(srv.url, token=mint("x"), get_token=get_token, backoff_base=0.05)
        c.on_state(events.append)
        ev = await first_end(c, events)
        assert (ev.state, ev.reason, ev.code, ev.status) == expected + (code, None)
        if wait == "backoff":
            assert 0.0 <= ev.delay <= 0.05
        elif wait == "slow":
            assert 15.0 <= ev.delay <= 30.0
        elif wait == "now":
            assert ev.delay == 0.0
        else:
            with pytest.raises(ClientClosed) as e:
                await c.publish("x.y", b"")
            assert e.value.reason == expected[1] and e.value.close_code == code
        await c.close()
    assert events[-1].state == "closed"


async def test_handshake_401_count_starts_over_after_another_outcome(herald):
    """401, then a lost connection, then 401 again: not two in a row, so the
    client asks get_token and retries instead of closing."""
    calls = []
    bad = mint("vic", secret="wrong-secret-wrong-secret-wrong-secret")
    events = []
    async with TcpProxy(herald.ws_port) as proxy:
        def get_token():
            calls.append(1)
            if len(calls) == 1:
                proxy.refuse_next = 1  # the next attempt is lost on the way
                return bad
            return mint("vic")

        c = HeraldClient(proxy.url, token=bad, get_token=get_token, backoff_base=0.05, backoff_max=0.1)
        c.on_state(events.append)
        await c.connect(timeout=5)
        await c.ping()
        await c.close()
    assert [(e.state, e.reason, e.status) for e in events] == [
        ("connecting", None, None),
        ("reconnecting", "unauthorized", 401),
        ("reconnecting", "connection_lost", None),
        ("reconnecting", "unauthorized", 401),
        ("open", None, None),
        ("closed", "client", None),
    ]
    assert len(calls) == 2 and proxy.refused == 1


async def test_get_token_failure_is_token_error_with_backoff(herald):
    """get_token() raising, or returning no token: reconnecting with reason
    token_error, backoff, and get_token is asked again."""
    answers = [RuntimeError("backend down"), "", None]
    calls = []

    def get_token():
        calls.append(time.monotonic())
        a = answers.pop(0) if answers else mint("wes")
        if isinstance(a, Exception):
            raise a
        return a

    events = []
    c = HeraldClient(herald.url, get_token=get_token, backoff_base=0.05, backoff_max=0.1)
    c.on_state(events.append)
    async with c:
        await c.ping()
    assert [(e.state, e.reason) for e in events] == [("connecting", None)] + [
        ("reconnecting", "token_error")] * 3 + [("open", None), ("closed", "client")]
    assert all(0.0 <= e.delay <= 0.1 for e in events if e.state == "reconnecting")
    assert len(calls) == 4

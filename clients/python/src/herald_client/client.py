"""The asyncio herald client: one connection, kept open, with its subscriptions."""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import random
import time
from dataclasses import dataclass
from typing import (
    Any,
    Awaitable,
    Callable,
    Deque,
    Dict,
    List,
    Optional,
    Tuple,
    Union,
)

from websockets.asyncio.client import ClientConnection, connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State as WsState
from websockets.uri import parse_uri

from . import reconnect, tokens, wire
from .errors import (
    AlreadySubscribed,
    ClientClosed,
    ConnectionLost,
    HeraldClientError,
    HeraldError,
    NotConnected,
    Timeout,
    closed_error,
)

__all__ = ["HeraldClient", "Subscription", "Publication", "Gap", "StateEvent"]

log = logging.getLogger("herald_client")

SUBPROTOCOL = "herald.v1"

#: The WebSocket ping (``websockets``' keepalive) is sent this often ...
PING_INTERVAL_S = 20.0
#: ... a pong that has not come this long after it ends the connection ...
PING_TIMEOUT_S = 10.0
#: ... and a close handshake (ours or the gateway's) gives up after this
#: long, so a dead connection counts as lost at most 15 s after the ping.
CLOSE_TIMEOUT_S = 5.0

TokenSource = Callable[[], Union[str, Awaitable[str]]]

# states
CONNECTING = "connecting"
OPEN = "open"
RECONNECTING = "reconnecting"
CLOSED = "closed"


@dataclass(frozen=True)
class Publication:
    """One publication of a topic. ``data`` is the payload as sent by the
    publisher; ``epoch`` the topic's epoch the ``seq`` belongs to."""

    topic: str
    seq: int
    data: bytes
    epoch: Optional[str]


@dataclass(frozen=True)
class Gap:
    """Publications may be missing between ``last_seq`` and ``seq``.

    ``reason`` is ``"not_recovered"`` (a re-subscribe could not replay what
    was missed), ``"epoch_changed"`` (the topic's sequence started over:
    seqs of the old and new epochs are not comparable), ``"seq_jump"`` (a
    publication arrived whose seq is not the last one + 1) or ``"dropped"``
    (this client's buffer overflowed because the app read too slowly).

    ``last_seq`` is the last seq the app got before the gap (before any
    publication: the ``since`` it gave, or the seq of the first REPLY, where
    it started); ``seq`` is the seq of the next publication the app gets
    (``last_seq + 1 … seq - 1`` may be missing; for ``epoch_changed``,
    everything after ``last_seq`` of the old epoch). When no publication
    follows yet as the gap is delivered (a REPLY with ``recovered: false``),
    ``seq`` is the topic's seq in that REPLY + 1, where live publications go
    on. ``epoch`` is the epoch the stream goes on in; ``dropped`` how many
    publications this client's full buffer dropped here (``None`` if none).

    Several gaps at one place in the stream (no publication between them)
    are one gap event; its reason is the first of ``epoch_changed``,
    ``not_recovered``, ``dropped``, ``seq_jump`` that applies.
    """

    reason: str
    topic: str
    last_seq: Optional[int]
    seq: int
    epoch: Optional[str]
    dropped: Optional[int] = None


@dataclass(frozen=True)
class StateEvent:
    """A connection state change.

    ``state``: ``"connecting"`` (the first attempt), ``"open"``,
    ``"reconnecting"`` (after every failure, before the wait) or
    ``"closed"`` (terminal).

    ``reconnecting``: ``reason`` (``connection_lost``, ``going_away``,
    ``server_closed``, ``slow_consumer``, ``rate_limited``,
    ``token_expired``, ``disconnected``, ``unauthorized``, ``unavailable``,
    ``token_error``, ``http_<status>``), ``delay`` (seconds until the next
    attempt) and ``attempt`` (the attempt counter used for the wait).
    ``closed``: ``reason`` (``client``, ``unauthorized``, ``disconnected``,
    ``protocol``, ``refused``).

    Both carry ``code``, the close code, when a close frame ended the
    connection, or ``status``, the HTTP status, when the upgrade was refused.
    """

    state: str
    reason: Optional[str] = None
    delay: Optional[float] = None
    code: Optional[int] = None
    status: Optional[int] = None
    attempt: Optional[int] = None


# When gaps meet (no publication between them), the merged gap takes the
# first of these reasons that applies.
_GAP_RANK = ("epoch_changed", "not_recovered", "dropped", "seq_jump")


@dataclass
class _PendingGap:
    """A gap in a subscription's buffer, not yet delivered: ``seq`` is where
    the stream is expected to go on (the next publication's seq, when there
    is one, wins)."""

    reason: str
    seq: int
    epoch: Optional[str]
    dropped: int = 0


def _merge_gaps(a: Optional[_PendingGap], b: _PendingGap) -> _PendingGap:
    """Two gaps with no publication between them are one gap: from where the
    first starts to where the second ends."""
    if a is None:
        return _PendingGap(b.reason, b.seq, b.epoch, b.dropped)
    reason = min(a.reason, b.reason, key=_GAP_RANK.index)
    if a.epoch != b.epoch:
        reason = "epoch_changed"
    return _PendingGap(reason, b.seq, b.epoch, a.dropped + b.dropped)


def _call_listeners(listeners: List[Callable[[Any], Any]], event: Any) -> None:
    for fn in list(listeners):
        try:
            r = fn(event)
            if inspect.isawaitable(r):
                asyncio.ensure_future(r)
        except Exception:  # an app's listener must not break the client
            log.exception("herald_client: listener raised")


class Subscription:
    """One topic, subscribed through :meth:`HeraldClient.subscribe`.

    Read it with ``async for p in sub`` (or ``await sub.next()``), unless it
    was created with a ``callback``. It holds at most ``buffer_size``
    publications; when the app reads slower than publications arrive, the
    oldest are dropped and a gap event (with ``dropped``) tells the app so.

    Gap events are delivered in stream order, by whoever reads the
    subscription (the iterator, or the task that calls ``callback``): the
    on_gap listeners are called right before the first publication after
    the gap is handed out, or, when none follows yet, as soon as the reader
    reaches the gap.
    """

    def __init__(
        self,
        client: "HeraldClient",
        topic: str,
        since: Optional[int],
        epoch: Optional[str],
        buffer_size: int,
        callback: Optional[Callable[[Publication], Any]],
    ) -> None:
        self._client = client
        self.topic = topic
        # position: the last seq received (delivered to the buffer) and its
        # epoch; before the first REPLY, what the app asked to resume from
        self._last_seq: Optional[int] = since
        self._epoch: Optional[str] = epoch
        # the last seq handed to the app (or where it started): a gap's last_seq
        self._app_seq: Optional[int] = since
        self._buffer_size = max(1, int(buffer_size))
        # publications (at most buffer_size) and the gaps between them (never
        # two gaps in a row: they are merged)
        self._buf: Deque[Union[Publication, _PendingGap]] = collections.deque()
        self._pubs = 0  # publications in _buf
        self._front_gap: Optional[_PendingGap] = None  # what dropping from the front removed
        self._dropped = 0
        self._wakeup = asyncio.Event()
        self._gap_listeners: List[Callable[[Gap], Any]] = []
        self._ready: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        # per connection
        self._conn: Optional[int] = None  # connection id the SUBSCRIBE was sent on
        self._awaiting_reply = False
        self._early: List[tuple] = []
        # end
        self._ended = False
        self._error: Optional[BaseException] = None
        self._callback = callback
        self._task: Optional[asyncio.Task] = None
        if callback is not None:
            self._task = asyncio.ensure_future(self._run_callback())

    # ----- public -----

    @property
    def last_seq(self) -> Optional[int]:
        """The last seq this client received for the topic (what a
        re-subscribe resumes from), ``None`` before the first REPLY."""
        return self._last_seq if self._ready.done() else None

    @property
    def epoch(self) -> Optional[str]:
        return self._epoch if self._ready.done() else None

    @property
    def active(self) -> bool:
        """Subscribed on the current connection (its REPLY arrived)."""
        return self._ready.done() and not self._ended and not self._awaiting_reply and self._conn is not None

    @property
    def closed(self) -> bool:
        return self._ended

    @property
    def dropped(self) -> int:
        """How many publications were dropped because the buffer was full."""
        return self._dropped

    def on_gap(self, fn: Callable[[Gap], Any]) -> Callable[[], None]:
        """Call ``fn(gap)`` for each gap event. Returns a function that
        removes the listener."""
        self._gap_listeners.append(fn)
        return lambda: self._gap_listeners.remove(fn) if fn in self._gap_listeners else None

    async def unsubscribe(self) -> None:
        """Stop the subscription: sends UNSUBSCRIBE when connected, ends the
        iterator (what is still buffered is discarded). Idempotent."""
        await self._client._unsubscribe(self)

    def __aiter__(self) -> "Subscription":
        if self._callback is not None:
            raise TypeError("this subscription delivers to its callback")
        return self

    async def __anext__(self) -> Publication:
        return await self._next()

    async def next(self, timeout: Optional[float] = None) -> Publication:
        """The next publication; raises :class:`Timeout` after ``timeout``
        seconds, ``StopAsyncIteration`` once unsubscribed, or the error that
        ended the subscription."""
        if timeout is None:
            return await self._next()
        try:
            return await asyncio.wait_for(self._next(), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"no publication of {self.topic} within {timeout} s") from None

    # ----- buffer -----

    async def _next(self) -> Publication:
        while True:
            gap, self._front_gap = self._front_gap, None
            while self._buf:
                entry = self._buf.popleft()
                if isinstance(entry, _PendingGap):
                    gap = _merge_gaps(gap, entry)
                    continue
                self._pubs -= 1
                if gap is not None:
                    self._emit_gap(gap, entry.seq, entry.epoch)
                self._app_seq = entry.seq
                return entry
            if gap is not None:  # no publication follows yet: the reader reached the gap
                self._emit_gap(gap, gap.seq, gap.epoch)
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    def _emit_gap(self, g: _PendingGap, seq: int, epoch: Optional[str]) -> None:
        last = self._app_seq if self._app_seq is not None else seq - 1
        _call_listeners(self._gap_listeners, Gap(g.reason, self.topic, last, seq, epoch, g.dropped or None))

    def _push(self, entry: Publication) -> None:
        if self._ended:
            return
        if self._pubs >= self._buffer_size:
            self._drop_oldest()
        self._buf.append(entry)
        self._pubs += 1
        self._wakeup.set()

    def _push_gap(self, g: _PendingGap) -> None:
        if self._ended:
            return
        if self._buf and isinstance(self._buf[-1], _PendingGap):
            self._buf[-1] = _merge_gaps(self._buf[-1], g)
        else:
            self._buf.append(g)
        self._wakeup.set()

    def _drop_oldest(self) -> None:
        """The buffer is full: drop the oldest publication, and fold the gaps
        before it into one gap delivered before what is left."""
        while self._buf:
            entry = self._buf.popleft()
            if isinstance(entry, _PendingGap):
                self._front_gap = _merge_gaps(self._front_gap, entry)
                continue
            self._pubs -= 1
            self._dropped += 1
            self._front_gap = _merge_gaps(self._front_gap, _PendingGap("dropped", entry.seq + 1, entry.epoch, 1))
            return

    async def _run_callback(self) -> None:
        assert self._callback is not None
        while True:
            try:
                p = await self._next()
            except StopAsyncIteration:
                return
            except Exception:
                return  # the subscription ended with an error; nothing to call
            try:
                r = self._callback(p)
                if inspect.isawaitable(r):
                    await r
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("herald_client: subscription callback raised")

    # ----- driven by the client -----

    def _send_args(self) -> tuple:
        return (self._last_seq, self._epoch)

    def _on_reply(self, result: Dict[str, Any]) -> None:
        seq = result.get("seq", 0)
        seq = seq if isinstance(seq, int) else 0
        epoch = result.get("epoch")
        recovered = result.get("recovered") is True
        had = self._last_seq
        epoch_changed = self._epoch is not None and epoch != self._epoch
        if had is None:
            # the first REPLY: the stream starts here
            self._last_seq = seq
            self._epoch = epoch
            if self._app_seq is None:
                self._app_seq = seq
        elif not recovered or epoch_changed:
            # live publications go on from seq + 1
            self._last_seq = seq
            self._epoch = epoch
            self._push_gap(_PendingGap("epoch_changed" if epoch_changed else "not_recovered", seq + 1, epoch))
        # recovered: the replayed publications since+1 … seq follow
        self._awaiting_reply = False
        if not self._ready.done():
            self._ready.set_result(None)
        early, self._early = self._early, []
        for seq_, data in early:
            self._on_publication(seq_, data)

    def _on_publication(self, seq: int, data: bytes) -> None:
        if self._ended:
            return
        if self._awaiting_reply:
            # PUBLICATION before the REPLY: held until the REPLY tells the position
            if len(self._early) < self._buffer_size:
                self._early.append((seq, data))
            return
        last = self._last_seq
        if last is not None:
            if seq <= last:
                return  # already delivered (replay overlap)
            if seq != last + 1:
                self._push_gap(_PendingGap("seq_jump", seq, self._epoch))
        self._last_seq = seq
        self._push(Publication(self.topic, seq, data, self._epoch))

    def _end(self, error: Optional[BaseException], discard: bool) -> None:
        if self._ended:
            return
        self._ended = True
        self._error = error
        if discard:
            self._buf.clear()
            self._pubs = 0
            self._front_gap = None
        if not self._ready.done():
            self._ready.set_exception(error if error is not None else ClientClosed("client"))
            self._ready.exception()  # mark retrieved: nobody may be waiting
        self._wakeup.set()

    def __repr__(self) -> str:
        return f"<Subscription {self.topic} seq={self._last_seq} epoch={self._epoch} ended={self._ended}>"


@dataclass
class _Pending:
    kind: str
    future: Optional["asyncio.Future[Any]"] = None
    sub: Optional[Subscription] = None


class HeraldClient:
    """A herald client: connects, keeps the connection open, reconnects
    following the reconnect table of clients/README.md and restores every
    subscription.

    Use it as ``async with HeraldClient(url, token=...) as c:`` (connects on
    entry, closes on exit) or call :meth:`connect` and :meth:`close`.

    :param url: ``ws://host:port/ws`` or ``wss://…``.
    :param token: the JWT sent as ``Authorization: Bearer`` on the upgrade.
    :param get_token: a function (sync or async) that returns a new token.
        With it, the client sends REFRESH before the token expires (at 80%
        of its lifetime, at least 5 s before ``exp``), reconnects with a
        new token after close 4001 / 4003 or a handshake 401, and replaces
        a token that expires within 30 s before every connection attempt.
        Without it, 4001 or 401 ends the client (state ``closed``,
        ``unauthorized``).
    :param backoff_base: backoff of attempt *n* is random in
        ``[0, min(backoff_max, backoff_base * 2**n)]`` seconds.
    :param buffer_size: default bound of each subscription's buffer.
    :param request_timeout: seconds to wait for the REPLY of a PUBLISH,
        PING, UNSUBSCRIBE, REFRESH.
    :param connect_timeout: how long ``async with`` / :meth:`connect` waits
        for the first open connection (``None``: for ever).
    :param open_timeout: one connection attempt (TCP + upgrade) may take
        this long before it counts as lost.
    :param rand: the random source of the jitter (a function returning a
        float in [0, 1)); for tests.
    :param ws_options: extra keyword arguments for ``websockets``'
        ``connect`` (e.g. ``ssl``); they win over the client's own, among
        them ``ping_interval=20``, ``ping_timeout=10``, ``close_timeout=5``
        (a dead connection counts as lost at most 15 s after a ping that
        got no pong).
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        get_token: Optional[TokenSource] = None,
        backoff_base: float = 0.25,
        backoff_max: float = 30.0,
        buffer_size: int = 1024,
        request_timeout: float = 10.0,
        connect_timeout: Optional[float] = 30.0,
        open_timeout: float = 10.0,
        rand: Optional[Callable[[], float]] = None,
        ws_options: Optional[Dict[str, Any]] = None,
    ) -> None:
        try:
            parse_uri(url)
        except InvalidURI as e:
            raise ValueError(f"not a WebSocket URL: {url!r} ({e})") from None
        if buffer_size < 1:
            raise ValueError("buffer_size must be >= 1")
        self.url = url
        self._token = token
        self._token_received_at = time.time()
        self._get_token = get_token
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._buffer_size = buffer_size
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._open_timeout = open_timeout
        self._rand = rand or random.random
        self._ws_options = dict(ws_options or {})

        self._state: Optional[str] = None
        self._state_listeners: List[Callable[[StateEvent], Any]] = []
        self._subs: Dict[str, Subscription] = {}
        self._pending: Dict[int, _Pending] = {}
        self._next_id = 0
        self._ws: Optional[ClientConnection] = None
        self._conn_id = 0
        self._task: Optional[asyncio.Task] = None
        self._closing = False
        self._closed_error: Optional[ClientClosed] = None
        self._open_event: Optional[asyncio.Event] = None
        self._done_event: Optional[asyncio.Event] = None
        self._wake: Optional[asyncio.Event] = None

    # ----- state -----

    @property
    def state(self) -> Optional[str]:
        """``None`` before :meth:`connect`, then ``connecting``, ``open``,
        ``reconnecting`` or ``closed``."""
        return self._state

    @property
    def token(self) -> Optional[str]:
        """The token in force (the last one the gateway accepted or will be
        sent on the next connection)."""
        return self._token

    def on_state(self, fn: Callable[[StateEvent], Any]) -> Callable[[], None]:
        """Call ``fn(event)`` on every state change. Returns a function that
        removes the listener."""
        self._state_listeners.append(fn)
        return lambda: self._state_listeners.remove(fn) if fn in self._state_listeners else None

    def _set_state(self, ev: StateEvent) -> None:
        self._state = ev.state
        log.debug("herald_client: %s", ev)
        _call_listeners(self._state_listeners, ev)

    @property
    def _is_open(self) -> bool:
        return self._state == OPEN and self._ws is not None

    def _check_usable(self) -> None:
        if self._closed_error is not None:
            raise self._closed_error
        if self._closing:
            raise ClientClosed("client")
        if self._task is None:
            raise NotConnected("connect() was not called")

    # ----- lifecycle -----

    async def __aenter__(self) -> "HeraldClient":
        try:
            await self.connect(timeout=self._connect_timeout)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self, timeout: Optional[float] = None) -> None:
        """Start the connection (once) and wait until it is open.

        Raises :class:`Unauthorized` / :class:`ClientClosed` if the client
        ended instead (e.g. handshake 401 without ``get_token``), and
        :class:`Timeout` after ``timeout`` seconds (the client keeps trying
        in the background; call :meth:`close` to stop it).
        """
        if self._closed_error is not None:
            raise self._closed_error
        if self._task is None:
            self._open_event = asyncio.Event()
            self._done_event = asyncio.Event()
            self._wake = asyncio.Event()
            self._set_state(StateEvent(CONNECTING))
            self._task = asyncio.ensure_future(self._supervise())
        assert self._open_event is not None and self._done_event is not None
        opened = asyncio.ensure_future(self._open_event.wait())
        done = asyncio.ensure_future(self._done_event.wait())
        try:
            await asyncio.wait({opened, done}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            opened.cancel()
            done.cancel()
        if self._closed_error is not None:
            raise self._closed_error
        if not self._is_open:
            raise Timeout(f"no connection to {self.url} within {timeout} s")

    async def close(self) -> None:
        """Close the connection (code 1000) and end the client: state
        ``closed`` with reason ``client``; every subscription ends (after
        what it already buffered) and every pending request fails with
        :class:`ClientClosed`."""
        if self._state == CLOSED:
            return
        self._closing = True
        # what waits for a reply fails now, whatever comes before the close
        # handshake ends
        self._settle_requests(lambda kind: ClientClosed("client"))
        if self._task is None:
            self._finish("client")
            return
        assert self._wake is not None
        self._wake.set()
        ws = self._ws
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(1000), 5.0)
            except Exception:
                pass
        else:
            self._task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 10.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        except Exception:
            log.exception("herald_client: supervisor failed")
        if self._state != CLOSED:
            self._finish("client")

    def _finish(self, reason: str, code: Optional[int] = None, status: Optional[int] = None) -> None:
        """Go to the terminal ``closed`` state."""
        if self._state == CLOSED:
            return
        err = closed_error(reason, code if code is not None else status)
        self._closed_error = err
        self._ws = None
        for p in self._pending.values():
            if p.future is not None and not p.future.done():
                p.future.set_exception(err)
                p.future.exception()
        self._pending.clear()
        # what is buffered is still handed out; then the iteration ends
        # (close() by the app) or raises the reason
        for sub in list(self._subs.values()):
            sub._end(None if reason == "client" else err, discard=False)
        self._subs.clear()
        self._set_state(StateEvent(CLOSED, reason, code=code, status=status))
        if self._done_event is not None:
            self._done_event.set()

    # ----- the connection loop -----

    async def _fetch_token(self) -> str:
        assert self._get_token is not None
        r = self._get_token()
        if inspect.isawaitable(r):
            r = await r
        if not isinstance(r, str) or not r:
            raise ValueError("get_token returned no token")
        return r

    async def _sleep(self, delay: float) -> None:
        assert self._wake is not None
        if delay <= 0:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except asyncio.TimeoutError:
            pass

    async def _supervise(self) -> None:
        attempt = 0
        consecutive_401s = 0
        need_token = self._token is None and self._get_token is not None
        try:
            while not self._closing:
                outcome: Optional[reconnect.Outcome] = None
                opened_for: Optional[float] = None
                # whatever ended the last connection: a token about to expire
                # is replaced first (it would only cost a refused handshake)
                if self._get_token is not None and tokens.expires_within(self._token, time.time()):
                    need_token = True
                if need_token:
                    try:
                        self._token = await self._fetch_token()
                        self._token_received_at = time.time()
                        need_token = False
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:
                        log.warning("herald_client: get_token failed: %r", e)
                        outcome = reconnect.Outcome.token_error()
                if outcome is None:
                    outcome, opened_for = await self._attempt()
                if self._closing:
                    break

                decision = reconnect.decide(
                    outcome, has_get_token=self._get_token is not None, consecutive_401s=consecutive_401s)
                if outcome.kind == "handshake" and outcome.code == 401:
                    consecutive_401s += 1
                else:
                    consecutive_401s = 0
                code = outcome.code if outcome.kind == "close" else None
                status = outcome.code if outcome.kind == "handshake" else None
                if not decision.reconnect:
                    self._finish(decision.reason, code, status)
                    return
                used = 0 if decision.reset_attempts or (
                    opened_for is not None and opened_for >= reconnect.OPEN_RESETS_AFTER_S) else attempt
                delay, attempt = reconnect.next_wait(
                    decision, attempt, opened_for=opened_for,
                    base=self._backoff_base, cap=self._backoff_max, rand=self._rand)
                need_token = decision.new_token and self._get_token is not None
                self._set_state(StateEvent(RECONNECTING, decision.reason, delay, code, status, used))
                await self._sleep(delay)
        except asyncio.CancelledError:
            pass
        finally:
            ws = self._ws
            self._ws = None
            if ws is not None:
                try:
                    await asyncio.wait_for(ws.close(1000), 2.0)
                except BaseException:
                    pass
            if self._state != CLOSED:
                self._connection_lost()
                self._finish("client")

    def _connect_options(self) -> Dict[str, Any]:
        """The keyword arguments of ``websockets``' ``connect`` for one
        attempt: the token as a header, the subprotocol, the keepalive, then
        the app's ``ws_options``."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        opts: Dict[str, Any] = dict(
            additional_headers=headers,
            subprotocols=[SUBPROTOCOL],
            compression=None,
            proxy=None,
            max_size=None,
            open_timeout=self._open_timeout,
            # dead connections: a ping every 20 s; no pong within 10 s, and
            # the connection is closed (at most 5 s more) and counted as lost
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
        )
        opts.update(self._ws_options)
        return opts

    async def _attempt(self) -> Tuple[reconnect.Outcome, Optional[float]]:
        """One connection attempt, and the connection while it lasts: returns
        what ended it and how long it was open (``None``: it never opened)."""
        try:
            ws = await ws_connect(self.url, **self._connect_options())
        except InvalidStatus as e:
            return reconnect.Outcome.handshake(e.response.status_code), None
        except (OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed, EOFError) as e:
            log.debug("herald_client: connection attempt failed: %r", e)
            return reconnect.Outcome.lost(), None

        loop = asyncio.get_running_loop()
        opened_at = loop.time()
        self._conn_id += 1
        self._ws = ws
        refresher: Optional[asyncio.Task] = None
        try:
            # restore every subscription before anything else is sent
            for sub in list(self._subs.values()):
                await self._send_subscribe(sub)
            self._set_state(StateEvent(OPEN))
            assert self._open_event is not None
            self._open_event.set()
            if self._get_token is not None:
                refresher = asyncio.ensure_future(self._refresh_loop(self._conn_id))
            try:
                async for msg in ws:
                    if isinstance(msg, (bytes, bytearray)):
                        try:
                            self._dispatch(bytes(msg))
                        except Exception:  # never let one message end the connection loop
                            log.exception("herald_client: failed to handle a gateway message")
            except ConnectionClosed:
                pass
        finally:
            if refresher is not None:
                refresher.cancel()
            self._ws = None
            if self._open_event is not None:
                self._open_event.clear()
            self._connection_lost()
        rcvd = ws.protocol.close_rcvd  # the gateway's close frame, None if there was none
        code = rcvd.code if rcvd is not None else None
        return reconnect.Outcome.close(code), loop.time() - opened_at

    def _settle_requests(self, error: Callable[[str], BaseException]) -> None:
        """Every request waiting for a reply ends: UNSUBSCRIBE succeeds (no
        connection, no subscription), PUBLISH, PING and REFRESH fail with
        ``error(kind)``. A SUBSCRIBE is kept as state (sent again on the next
        connection, or ended with the client)."""
        for p in self._pending.values():
            if p.kind == "subscribe" or p.future is None or p.future.done():
                continue
            if p.kind == "unsubscribe":
                p.future.set_result({})
            else:
                p.future.set_exception(error(p.kind))
                p.future.exception()  # retrieved: its caller may be gone

    def _connection_lost(self) -> None:
        """The connection is gone: settle what was waiting on it. A PUBLISH or
        PING already sent fails with ConnectionLost (ClientClosed once the app
        called close())."""
        if self._closing:
            self._settle_requests(lambda kind: ClientClosed("client"))
        else:
            self._settle_requests(lambda kind: ConnectionLost(f"the connection ended before the {kind} reply"))
        self._pending = {}
        for sub in self._subs.values():
            sub._conn = None
            sub._awaiting_reply = False
            sub._early.clear()

    # ----- requests -----

    def _new_id(self) -> int:
        for _ in range(16):
            self._next_id = self._next_id + 1 if self._next_id < wire.MAX_ID else 1
            if self._next_id not in self._pending:
                return self._next_id
        raise HeraldClientError("too many requests in flight")

    async def _send(self, data: bytes) -> None:
        ws = self._ws
        if ws is None or ws.state is not WsState.OPEN:
            # closing or closed: nothing is sent (and websockets would wait
            # for the close to finish before saying so)
            raise NotConnected("not connected")
        try:
            await ws.send(data)
        except ConnectionClosed:
            # the frame was handed to the connection, which then ended
            raise ConnectionLost("the connection ended while sending") from None

    async def _request(self, kind: str, build: Callable[[int], bytes], timeout: Optional[float]) -> Dict[str, Any]:
        self._check_usable()
        if not self._is_open:
            raise NotConnected(f"{kind}: not connected (state {self._state})")
        id = self._new_id()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[id] = _Pending(kind, fut)
        try:
            await self._send(build(id))
        except BaseException:
            self._pending.pop(id, None)
            raise
        t = self._request_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(fut), t)
        except asyncio.TimeoutError:
            raise Timeout(f"{kind}: no reply within {t} s") from None
        finally:
            if self._pending.get(id) is not None and self._pending[id].future is fut:
                del self._pending[id]

    async def publish(self, topic: str, data: Union[bytes, bytearray, memoryview, str], *,
                      timeout: Optional[float] = None) -> int:
        """PUBLISH ``data`` to ``topic``; returns the seq it got.

        Raises :class:`NotConnected` at once when there is no open
        connection (a publication is never sent late), :class:`HeraldError`
        on an ERROR (403 not allowed, 500 shutting down, …) and
        :class:`Timeout`."""
        payload = data.encode() if isinstance(data, str) else bytes(data)
        result = await self._request("publish", lambda id: wire.publish(id, topic, payload), timeout)
        return int(result.get("seq", 0))

    async def ping(self, *, timeout: Optional[float] = None) -> float:
        """Application-level PING; returns the round trip in seconds."""
        t0 = time.perf_counter()
        await self._request("ping", wire.ping, timeout)
        return time.perf_counter() - t0

    async def refresh(self, token: Optional[str] = None, *, timeout: Optional[float] = None) -> None:
        """Send REFRESH now with ``token`` (or one from ``get_token``). The
        client then uses it, also for later reconnects. Raises
        :class:`HeraldError` (401, 403) if the gateway refuses it; the old
        token stays in force then."""
        if token is None:
            if self._get_token is None:
                raise ValueError("refresh() needs a token or get_token")
            token = await self._fetch_token()
        tok = token
        await self._request("refresh", lambda id: wire.refresh(id, tok), timeout)
        self._token = tok
        self._token_received_at = time.time()

    async def _refresh_loop(self, conn_id: int) -> None:
        """Sends REFRESH before the current token expires (with get_token)."""
        while self._conn_id == conn_id and self._is_open:
            delay = tokens.refresh_delay(self._token, self._token_received_at, time.time())
            if delay is None:
                return
            await asyncio.sleep(delay)
            if self._conn_id != conn_id or not self._is_open:
                return
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except NotConnected:
                return
            except ClientClosed:
                return
            except Exception as e:
                # refused (401/403), timeout, get_token failed: the old token
                # stays; try again shortly (a 4001 will follow if it never works)
                log.warning("herald_client: token refresh failed: %r", e)
                _, exp = tokens.token_times(self._token)
                wait = 2.0 if exp is None else max(1.0, min(5.0, (exp - time.time()) / 2))
                await asyncio.sleep(wait)

    # ----- subscriptions -----

    async def subscribe(
        self,
        topic: str,
        *,
        since: Optional[int] = None,
        epoch: Optional[str] = None,
        callback: Optional[Callable[[Publication], Any]] = None,
        on_gap: Optional[Callable[[Gap], Any]] = None,
        buffer_size: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> Subscription:
        """Subscribe to ``topic`` and wait for the gateway's REPLY.

        ``since``/``epoch`` resume after a seq the app already has (replayed
        from the gateway's history when it still holds it; a gap event
        otherwise). With ``callback``, each publication is passed to
        ``callback(p)`` (sync or async, called one at a time, in order);
        without it, iterate the returned subscription.

        When the client is not connected the subscription is kept and sent
        as soon as it is; this call then waits for that (``timeout``:
        :class:`Timeout` after that many seconds, the subscription is
        dropped). Raises :class:`HeraldError` on ERROR (403 topic not
        allowed, 413 too many subscriptions, 503), :class:`AlreadySubscribed`
        when this client already has ``topic``.
        """
        self._check_usable()
        if topic in self._subs:
            raise AlreadySubscribed(f"already subscribed to {topic}")
        sub = Subscription(self, topic, since, epoch, buffer_size or self._buffer_size, callback)
        if on_gap is not None:
            sub.on_gap(on_gap)
        self._subs[topic] = sub
        try:
            if self._is_open:
                await self._send_subscribe(sub)
            if timeout is None:
                await asyncio.shield(sub._ready)
            else:
                await asyncio.wait_for(asyncio.shield(sub._ready), timeout)
        except asyncio.TimeoutError:
            await self._unsubscribe(sub)
            raise Timeout(f"subscribe {topic}: no reply within {timeout} s") from None
        except BaseException:
            if self._subs.get(topic) is sub:
                del self._subs[topic]
            sub._end(None, discard=True)
            if sub._task is not None:
                sub._task.cancel()
            raise
        return sub

    async def _send_subscribe(self, sub: Subscription) -> None:
        if self._ws is None or sub._conn == self._conn_id or sub._ended:
            return
        id = self._new_id()
        sub._conn = self._conn_id
        sub._awaiting_reply = True
        self._pending[id] = _Pending("subscribe", None, sub)
        since, epoch = sub._send_args()
        try:
            await self._send(wire.subscribe(id, sub.topic, since, epoch))
        except NotConnected:
            pass  # the next connection sends it again

    async def _unsubscribe(self, sub: Subscription) -> None:
        if sub._ended:
            return
        was_sent = sub._conn is not None and sub._conn == self._conn_id and self._is_open
        if self._subs.get(sub.topic) is sub:
            del self._subs[sub.topic]
        sub._end(None, discard=True)
        if sub._task is not None:
            sub._task.cancel()
        if not was_sent:
            return
        try:
            await self._request("unsubscribe", lambda id: wire.unsubscribe(id, sub.topic), None)
        except HeraldError as e:
            if e.code != 409:  # 409 not subscribed: nothing to undo
                raise
        except (NotConnected, ClientClosed):
            pass  # no connection, no subscription

    # ----- incoming -----

    def _dispatch(self, data: bytes) -> None:
        try:
            msg = wire.decode(data)
        except wire.MalformedMessage as e:
            log.warning("herald_client: ignoring a malformed gateway message: %s", e)
            return
        t = msg[0]
        if t == wire.PUBLICATION:
            _, topic, seq, payload = msg
            sub = self._subs.get(topic)
            if sub is not None and sub._conn == self._conn_id:
                sub._on_publication(seq, payload)
            return
        if t == wire.REPLY:
            _, id, result = msg
            p = self._pending.pop(id, None)
            if p is None:
                return
            if p.kind == "subscribe":
                assert p.sub is not None
                if not p.sub._ended and self._subs.get(p.sub.topic) is p.sub:
                    p.sub._on_reply(result)
            elif p.future is not None and not p.future.done():
                p.future.set_result(result)
            return
        if t == wire.ERROR:
            _, id, code, message = msg
            err = HeraldError(code, message)
            p = self._pending.pop(id, None)
            if p is None:
                log.warning("herald_client: gateway error for request %d: %s", id, err)
                return
            if p.kind == "subscribe":
                sub = p.sub
                assert sub is not None
                if self._subs.get(sub.topic) is sub:
                    del self._subs[sub.topic]
                # the subscription ends: a first SUBSCRIBE raises it from
                # subscribe(), a restore after reconnect ends the iterator with it
                sub._end(err, discard=False)
            elif p.future is not None and not p.future.done():
                p.future.set_exception(err)
            return

"""Helpers of the tests: the real herald gateway on free loopback ports,
HS256 tokens, a TCP relay that can cut connections.

The binary comes from ``HERALD_BIN``, else ``<repo>/target/release/herald``,
else ``<repo>/target/debug/herald``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[3]
SECRET = "herald-python-client-tests-secret-0123456789"
API_KEY = "test-key"


def herald_bin() -> str:
    env = os.environ.get("HERALD_BIN")
    if env:
        return env
    for p in (REPO / "target" / "release" / "herald", REPO / "target" / "debug" / "herald"):
        if p.is_file():
            return str(p)
    pytest.skip("no herald binary: build it (cargo build --release) or set HERALD_BIN")
    raise AssertionError  # unreachable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(
    sub: str = "alice",
    ttl: float = 3600,
    topics: Optional[List[str]] = None,
    pub: Optional[List[str]] = None,
    secret: str = SECRET,
    exp: Optional[int] = None,
) -> str:
    """An HS256 JWT, signed with the standard library."""
    now = int(time.time())
    claims: Dict[str, Any] = {
        "sub": sub,
        "iat": now,
        "exp": exp if exp is not None else now + int(ttl),
        "topics": ["*"] if topics is None else topics,
        "pub": ["*"] if pub is None else pub,
    }
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


class Herald:
    """One herald process on fixed free ports (so it can be restarted on them)."""

    def __init__(self, **config: Any) -> None:
        self.ws_port, self.ingest_port, self.admin_port = free_port(), free_port(), free_port()
        self.env = dict(os.environ)
        for k in list(self.env):
            if k.startswith("HERALD_"):
                del self.env[k]
        self.env.update(
            HERALD_LISTEN__WS=f"127.0.0.1:{self.ws_port}",
            HERALD_LISTEN__INGEST=f"127.0.0.1:{self.ingest_port}",
            HERALD_LISTEN__ADMIN=f"127.0.0.1:{self.admin_port}",
            HERALD_AUTH__HS256_SECRET=SECRET,
            HERALD_API__KEYS=json.dumps([API_KEY]),
            HERALD_AUTH__LEEWAY_S="0",
            HERALD_SHARDS__COUNT="1",
            HERALD_LOG__LEVEL="warn",
            HERALD_TIMEOUTS__TICK_MS="50",
        )
        for key, value in config.items():  # e.g. hub__history_size=8
            self.env["HERALD_" + key.upper()] = str(value)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen([herald_bin()], env=self.env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"herald exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.admin + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.02)
        raise RuntimeError("herald did not become ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def _call(self, method: str, path: str, body: bytes = b"") -> Dict[str, Any]:
        req = urllib.request.Request(
            self.admin + path, data=body if method == "POST" else None, method=method,
            headers={"Authorization": f"Bearer {API_KEY}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read() or b"{}")

    def publish(self, topic: str, data: bytes) -> int:
        """POST /api/publish/<topic>: 202 {"seq": n}."""
        return int(self._call("POST", f"/api/publish/{topic}", data)["seq"])

    def disconnect(self, user: str) -> int:
        return int(self._call("POST", "/api/disconnect", json.dumps({"user": user}).encode())["closed"])

    def stats(self) -> Dict[str, Any]:
        return self._call("GET", "/api/stats")

    async def apublish(self, topic: str, data: bytes) -> int:
        return await asyncio.get_running_loop().run_in_executor(None, self.publish, topic, data)


class TcpProxy:
    """A TCP relay in front of the gateway, to cut connections as a network
    would (no close frame), to refuse new ones for a while (``refusing``, or
    the next ``refuse_next`` ones) and to stall open ones (``holding``: what
    either side sends waits in the relay until it is set back to false)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.refusing = False
        self.refuse_next = 0
        self.refused = 0
        self.holding = False
        self.accepted = 0
        self._pairs: List[Any] = []
        self._server: Optional[asyncio.base_events.Server] = None
        self.port = 0

    async def __aenter__(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.drop_all()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def drop_all(self) -> None:
        for w1, w2 in self._pairs:
            for w in (w1, w2):
                w.transport.abort()
        self._pairs.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing or self.refuse_next > 0:
            self.refuse_next = max(0, self.refuse_next - 1)
            self.refused += 1
            writer.transport.abort()
            return
        self.accepted += 1
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, uw)
        self._pairs.append(pair)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await r.read(65536)
                    if not data:
                        break
                    while self.holding:
                        await asyncio.sleep(0.005)
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.transport.abort()

        await asyncio.gather(pipe(reader, uw), pipe(ur, writer))
        if pair in self._pairs:
            self._pairs.remove(pair)


async def wait_until(pred, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``pred()`` every 10 ms, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)

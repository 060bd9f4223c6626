"""A cheap open-loop HTTP/1.1 client: keep-alive connections as asyncio Protocols.

The overload run's client shares 2 cores with the servers it measures, so what it costs
per request is taken from them. Streams and a task per request cost it about 80 us of
CPU a request (measured: 63 CPU-s for some 800,000 requests), which at 9,600 requests/s
is most of a core. Here a request is a write on an idle connection and a callback when
its answer is parsed: no task, no stream, no per-request timer (one sweep every
``SWEEP_S`` fails what has waited past the timeout).

Only what the servers under test send is understood: answers with a Content-Length
(no chunked bodies), one request at a time per connection (no pipelining).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

SWEEP_S = 0.5  # how often requests waiting past the timeout are failed
_PROBLEM = re.compile(rb'"type":"[^"]*/([a-z-]+)"')


@dataclass(slots=True)
class Answer:
    status: int
    problem: str  # the problem type's last segment, "" for a success
    retry_after: bool


# Called once per request: the answer, or None and why not ("not-sent", "timeout",
# "connection: <error>").
Done = Callable[[Answer | None, str], None]


def parse_answer(buf: bytearray) -> tuple[int, Answer, bool] | None:
    """The first whole answer in ``buf``: (its length, the answer, whether the server
    closes the connection after it); None while it is incomplete. Pure."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        length = 0
    else:
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else len(head)])
    total = end + 4 + length
    if len(buf) < total:
        return None
    problem = ""
    if status >= 400 and length and buf[end + 4] == ord("{"):
        found = _PROBLEM.search(bytes(buf[end + 4 : total]))
        problem = found.group(1).decode() if found else ""
    closes = b"\r\nconnection: close" in head
    return total, Answer(status, problem, b"\r\nretry-after:" in head), closes


class _Conn(asyncio.Protocol):
    def __init__(self, client: OpenLoop) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.raw = b""
        self.done: Done | None = None
        self.sent_at = 0.0
        self.reused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, raw: bytes, done: Done, now: float, reused: bool) -> None:
        self.raw, self.done, self.sent_at, self.reused = raw, done, now, reused
        self.client.busy.add(self)
        assert self.transport is not None
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        parsed = parse_answer(self.buf)
        if parsed is None:
            return
        length, answer, closes = parsed
        del self.buf[:length]
        done, self.done = self.done, None
        self.client.busy.discard(self)
        if closes:
            self._close()
        else:
            self.client.idle.append(self)
        if done is not None:
            self.client.finish(done, answer, "")

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.open -= 1
        self.client.busy.discard(self)
        if self in self.client.idle:
            self.client.idle.remove(self)
        done, self.done = self.done, None
        if done is None:
            return
        if self.reused and not self.buf:
            # A kept-alive connection the server had closed (its keep-alive timeout):
            # nothing was answered, so the request goes again once on a new connection,
            # as HTTP clients do (every write here carries an Idempotency-Key).
            self.client.submit(self.raw, done, retry=True)
            return
        reason = type(exc).__name__ if exc is not None else "IncompleteReadError"
        self.client.finish(done, None, f"connection: {reason}")

    def fail(self, label: str) -> None:
        done, self.done = self.done, None
        self._close()
        if done is not None:
            self.client.finish(done, None, label)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class OpenLoop:
    """Keep-alive connections to one host:port. ``submit`` takes an idle connection or
    opens a new one, up to ``max_connections`` (beyond: answered "not-sent" at once)."""

    def __init__(self, host: str, port: int, max_connections: int, timeout_s: float) -> None:
        self.host, self.port = host, port
        self.max_connections, self.timeout_s = max_connections, timeout_s
        self.idle: list[_Conn] = []
        self.busy: set[_Conn] = set()
        self.open = 0
        self.peak_open = 0
        self.pending = 0
        self._loop = asyncio.get_running_loop()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed = False
        self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)

    def submit(self, raw: bytes, done: Done, *, retry: bool = False) -> None:
        """Send ``raw`` (a whole request); ``done`` is called once with its outcome."""
        if not retry:
            self.pending += 1
            self._drained.clear()
        if self.idle and not retry:
            self.idle.pop().send(raw, done, self._loop.time(), True)
            return
        if self.open >= self.max_connections:
            self.finish(done, None, "not-sent")
            return
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        self._loop.create_task(self._connect(raw, done))

    async def _connect(self, raw: bytes, done: Done) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                _, conn = await self._loop.create_connection(
                    lambda: _Conn(self), self.host, self.port
                )
        except TimeoutError:
            self.open -= 1
            self.finish(done, None, "timeout")
            return
        except OSError as exc:
            self.open -= 1
            self.finish(done, None, f"connection: {type(exc).__name__}")
            return
        if self._closed:
            conn.done = None
            conn.fail("connection: closed")
            self.finish(done, None, "connection: closed")
            return
        conn.send(raw, done, self._loop.time(), False)

    def finish(self, done: Done, answer: Answer | None, label: str) -> None:
        self.pending -= 1
        if self.pending == 0:
            self._drained.set()
        done(answer, label)

    async def drained(self) -> None:
        """Until every submitted request has had its ``done``."""
        await self._drained.wait()

    def _sweep(self) -> None:
        cutoff = self._loop.time() - self.timeout_s
        for conn in [c for c in self.busy if c.sent_at < cutoff]:
            self.busy.discard(conn)
            conn.fail("timeout")
        self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)

    def __enter__(self) -> OpenLoop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection and stop the sweep; a connection still being opened
        is closed when it opens."""
        self._closed = True
        self._sweeper.cancel()
        for conn in [*self.idle, *self.busy]:
            conn.fail("connection: closed")
        self.idle.clear()

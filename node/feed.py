"""The committed-event feed: a bounded ring of the ledger's events, served by index.

Theory of operation: the Raft tick thread applies each committed batch and calls
``publish(index, events)`` with the batch's ledger index (1, 2, 3, ... the same on every
node) and its encoded events. The ring keeps one chunk per ledger index, the empty ones
too, so a reader finds index ``i`` by arithmetic. It holds about ``retention_events``
events (an empty chunk counts as one); older chunks are dropped from the front, and
``base`` (the index up to which events are gone) moves with them.

Events are stored as the ledger produced them and encoded to dicts (``encode``) the first
time a reader asks for their chunk, on the reader's thread: the tick thread, which every
commit waits for, never pays for encoding, and a node nobody reads from never encodes.

A reader asks ``read(from_index, limit)``: events with index > from_index, whole chunks
only (a chunk is never split, so resuming from ``last_index`` never skips an event), at
least one chunk even when it alone exceeds ``limit``. ``read`` returns None when
``from_index < base``: the events the reader needs are gone, and it must reset to a
snapshot of the state first. After a restart the ring only holds what was replayed after
the dump, so ``reset(index)`` (called whenever the ledger is replaced by a dump or a
snapshot from the leader) empties it and puts ``base`` at the new state's index.

Long-poll: ``wait_newer(index, timeout_s)`` parks an asyncio future. The check of
``head`` and the registration of the waiter happen under the same lock as
``publish``'s update, so no wake-up is lost; the wake-up crosses threads with
``loop.call_soon_threadsafe``, at most one scheduled at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

EventDict = dict[str, Any]
Encoder = Callable[[Any], EventDict]
MAX_FEED_PAGE_EVENTS = 10_000  # events one read may return (the API caps ``limit`` here)
MAX_FEED_WAIT_MS = 30_000  # the longest long-poll a reader may ask for


class _Chunk:
    """The events of one ledger entry, encoded on first read."""

    __slots__ = ("encoded", "events")

    def __init__(self, events: tuple[Any, ...]) -> None:
        self.events = events
        self.encoded: list[EventDict] | None = None

    def __len__(self) -> int:
        return len(self.events)


def _identity(event: Any) -> EventDict:
    return dict(event)


@dataclass(frozen=True, slots=True)
class FeedPage:
    events: list[EventDict]  # ordered by (index, seq); whole chunks only
    last_index: int  # the reader is current up to here: resume with from=last_index


class Feed:
    """Thread-safe ring of committed events with asyncio long-poll waiters."""

    def __init__(self, retention_events: int, encode: Encoder = _identity) -> None:
        if retention_events < 1:
            raise ValueError(f"retention_events={retention_events}: expected >= 1")
        self._retention = retention_events
        self._encode = encode
        self._lock = threading.Lock()
        self._chunks: deque[_Chunk] = deque()  # chunk k has ledger index base+1+k
        self._base = 0  # events with index <= base are not (or no longer) kept
        self._weight = 0  # sum over chunks of max(1, len(chunk))
        self._waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_scheduled = False
        self._closed = False

    # -- writer side (Raft tick thread) ---------------------------------------------------

    def publish(self, index: int, events: Sequence[Any]) -> None:
        """Append the events of ledger entry ``index`` (must follow the current head)."""
        chunk = _Chunk(tuple(events))
        with self._lock:
            head = self._base + len(self._chunks)
            if index != head + 1:
                # Not contiguous (should not happen): restart the ring just before it, so
                # readers from older positions get a snapshot instead of a gap.
                self._chunks.clear()
                self._weight = 0
                self._base = index - 1
            self._chunks.append(chunk)
            self._weight += max(1, len(chunk))
            while self._weight > self._retention and len(self._chunks) > 1:
                dropped = self._chunks.popleft()
                self._weight -= max(1, len(dropped))
                self._base += 1
            wake = self._schedule_wake_locked()
        if wake is not None:
            wake()

    def reset(self, index: int) -> None:
        """The state was replaced by one at ledger ``index``: forget older events."""
        with self._lock:
            self._chunks.clear()
            self._weight = 0
            self._base = index
            wake = self._schedule_wake_locked()
        if wake is not None:
            wake()

    def _schedule_wake_locked(self) -> Callable[[], None] | None:
        if not self._waiters or self._wake_scheduled or self._loop is None:
            return None
        self._wake_scheduled = True
        loop = self._loop

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed (shutdown)
                loop.call_soon_threadsafe(self._wake_all)

        return wake

    # -- reader side (event loop) ----------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake long-poll waiters on ``loop`` (call once, from the loop)."""
        with self._lock:
            self._loop = loop
            self._closed = False

    def head(self) -> int:
        """The newest ledger index published."""
        with self._lock:
            return self._base + len(self._chunks)

    def base(self) -> int:
        """Events with an index at or below this are no longer kept."""
        with self._lock:
            return self._base

    def waiters(self) -> int:
        """Long-polls waiting right now."""
        with self._lock:
            return len(self._waiters)

    def event_count(self) -> int:
        with self._lock:
            return sum(len(c) for c in self._chunks)

    def read(self, from_index: int, limit: int) -> FeedPage | None:
        """Events with index > ``from_index``; None when the reader needs a snapshot."""
        if limit < 1:
            raise ValueError(f"limit={limit}: expected >= 1")
        with self._lock:
            if from_index < self._base:
                return None
            head = self._base + len(self._chunks)
            if from_index >= head:
                return FeedPage([], from_index)
            chunks: list[_Chunk] = []
            count = 0
            position = from_index - self._base
            last = from_index
            while position < len(self._chunks):
                chunk = self._chunks[position]
                if count and count + len(chunk) > limit:
                    break
                chunks.append(chunk)
                count += len(chunk)
                position += 1
                last = self._base + position
        # Encoding happens outside the lock; two readers racing encode the same values.
        events: list[EventDict] = []
        for chunk in chunks:
            if chunk.encoded is None:
                chunk.encoded = [self._encode(e) for e in chunk.events]
            events.extend(chunk.encoded)
        return FeedPage(events, last)

    async def wait_newer(self, index: int, timeout_s: float) -> bool:
        """Wait until an index above ``index`` is published (or a reset past it, or close).

        Returns False on timeout. A wake-up for a publish at or below ``index`` (a
        reader ahead of this node, a follower still catching up) waits on: answering
        it would only hand the reader an empty page and a poll to make again.
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    fut: asyncio.Future[None] = loop.create_future()
                    with self._lock:
                        if self._closed or self._base + len(self._chunks) > index:
                            return True
                        self._waiters.add(fut)
                    try:
                        await fut
                    finally:
                        with self._lock:
                            self._waiters.discard(fut)
        except TimeoutError:
            return False

    def _wake_all(self) -> None:
        with self._lock:
            self._wake_scheduled = False
            waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def close(self) -> None:
        """Release every waiter now and from now on (the node is shutting down)."""
        with self._lock:
            self._closed = True
        self._wake_all()

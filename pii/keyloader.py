"""Data keys for an event loop: cache hits at once, misses group-committed on one thread.

Theory of operation: a shopper's first checkout needs their data key made and stored
durably (``KeyStore.get_or_create_many``: a commit, so a disk flush), and at a flash
sale nearly every checkout is a first one. Done on the event loop, every such commit
stalled the whole gateway; done on a thread per call, it still cost a flush per shopper.
``KeyLoader.key`` answers from the sealer's cache without leaving the loop; a miss is
queued, and the store's own thread takes every queued miss at once (at most
``MAX_KEY_GROUP``) in one transaction: one commit for the group, and misses that arrive
while it runs wait for the next group, as ``payments.attempts`` does with its rows. A
caller is answered only once the group's commit has returned, so no key is used before
it is durable. Concurrent misses for one shopper share one future (each caller shielded,
so one cancelled caller does not cancel the others).

``prefetch`` queues a miss without waiting for it: the gateway calls it when a shopper's
hold is placed, so the key is made while they still shop and their checkout, seconds
later, seals at once instead of waiting for a group's commit (on a loaded machine that
wait was a third of a checkout's time: docs/BENCHMARKS.md). It is bounded
(``MAX_PREFETCH_QUEUED``) and best effort: a prefetch that is skipped or fails leaves the
checkout to load the key as before.

Errors: a database error fails every caller of its group with that very exception (the
next group tries again); a key that does not open (``PiiError``: altered, or its master
key missing) fails only its shopper: the group is then looked up again one shopper at a
time, which costs no new keys, as they were committed before being opened.

``aclose`` (and ``close`` for synchronous callers) fails the calls still queued with
``KeyLoaderClosed``, lets the group in progress finish, then closes the store on its own
thread, so shutting down never waits for more than one transaction.
"""

from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import ThreadPoolExecutor

from pii.aead import DataKey
from pii.errors import PiiError
from pii.keystore import check_user
from pii.sealing import Sealer

MAX_KEY_GROUP = 256  # data keys fetched or made in one store transaction
# Keys waiting to be made or fetched beyond which ``prefetch`` does nothing: a warm-up
# must never queue more store work than a few groups (the checkout still gets its key).
MAX_PREFETCH_QUEUED = 4 * MAX_KEY_GROUP

_Outcome = DataKey | Exception  # a shopper's key, or why they get none


def _retrieved(future: asyncio.Future[DataKey]) -> None:
    """Mark a prefetch's outcome as seen: a failed warm-up is not an unhandled error
    (a checkout waiting on the same future still gets the exception)."""
    if not future.cancelled():
        future.exception()


class KeyLoaderClosed(PiiError):
    """A data key was asked of a key loader that is closed (the process is stopping)."""


class KeyLoader:
    """Data keys of ``sealer`` for one event loop; the store is used from one thread."""

    def __init__(self, sealer: Sealer, *, max_group: int = MAX_KEY_GROUP) -> None:
        if max_group < 1:
            raise ValueError(f"max_group={max_group}: expected >= 1")
        self.sealer = sealer
        self._max_group = max_group
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pii-keys")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued: dict[str, asyncio.Future[DataKey]] = {}  # in arrival order
        self._loading: dict[str, asyncio.Future[DataKey]] = {}  # the group in progress
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.groups = 0  # groups handed to the store (each one transaction at most)
        self.largest_group = 0
        self.prefetched = 0  # loads started by ``prefetch``

    async def key(self, user_id: str) -> DataKey:
        """The shopper's data key: cached, else fetched or made (durably) with others."""
        cached = self.sealer.cached_key(user_id)
        if cached is not None:
            return cached
        if self._closed:
            raise KeyLoaderClosed("the data-key loader is closed: the gateway is stopping")
        check_user(user_id)  # a bad id fails its caller alone, not the group it would join
        loop = asyncio.get_running_loop()
        self._bind(loop)
        future = self._loading.get(user_id)
        if future is None:
            future = self._queued.get(user_id)
        if future is None:
            future = self._queued[user_id] = loop.create_future()
            if self._flusher is None or self._flusher.done():
                self._flusher = loop.create_task(self._flush(), name="pii-keys-flush")
        return await asyncio.shield(future)

    def prefetch(self, user_id: str) -> bool:
        """Start fetching or making the shopper's data key without waiting for it, so that
        their checkout finds it cached. True if a load was queued; False if the key is
        cached or already on its way, the id is not a user id, the loader is closed or busy
        on another event loop, or ``MAX_PREFETCH_QUEUED`` keys already wait (nothing is
        lost: the checkout loads it).

        Called on the event loop. An error is left for the checkout to meet again: the
        prefetch's own future never raises to anyone."""
        if self._closed or len(self._queued) >= MAX_PREFETCH_QUEUED:
            return False
        if user_id in self._queued or user_id in self._loading:
            return False
        if self.sealer.cached_key(user_id) is not None:
            return False
        try:
            check_user(user_id)
        except PiiError:
            return False
        loop = asyncio.get_running_loop()
        try:
            self._bind(loop)
        except RuntimeError:  # keys pending on another loop: not this warm-up's business
            return False
        future = self._queued[user_id] = loop.create_future()
        future.add_done_callback(_retrieved)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="pii-keys-flush")
        self.prefetched += 1
        return True

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use ``loop``; another one only once nothing is pending on the first (or the
        first is closed: what was pending there has no one waiting any more)."""
        if self._loop is loop:
            return
        old = self._loop
        if old is not None and not old.is_closed() and (self._queued or self._loading):
            raise RuntimeError("KeyLoader: data keys are pending on another event loop")
        self._queued.clear()
        self._loading.clear()
        self._loop, self._flusher = loop, None

    async def _flush(self) -> None:
        """Hand the queued misses to the store's thread, a group at a time, until none wait."""
        loop = asyncio.get_running_loop()
        while self._queued:
            users = list(itertools.islice(self._queued, self._max_group))
            group = {user_id: self._queued.pop(user_id) for user_id in users}
            self._loading.update(group)
            self.groups += 1
            self.largest_group = max(self.largest_group, len(users))
            outcomes: list[_Outcome]
            try:
                outcomes = await loop.run_in_executor(self._pool, self._load_group, users)
            except Exception as exc:  # the group failed as a whole (database down)
                outcomes = [exc] * len(users)
            except BaseException:  # the loop is going down: no one is left to answer
                self._cancel(group)
                self._cancel(self._queued)
                self._queued.clear()
                raise
            finally:
                for user_id in users:
                    self._loading.pop(user_id, None)
            for future, outcome in zip(group.values(), outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _load_group(self, users: list[str]) -> list[_Outcome]:
        """On the store's thread: the keys of ``users``, one transaction for them all."""
        try:
            keys = self.sealer.load(users)
        except PiiError:
            if len(users) == 1:
                raise
            # One shopper's stored key does not open: look again one by one, so only
            # that shopper's checkout fails (the keys are all stored by now).
            return [self._load_alone(user_id) for user_id in users]
        return [keys[user_id] for user_id in users]

    def _load_alone(self, user_id: str) -> _Outcome:
        try:
            return self.sealer.load([user_id])[user_id]
        except Exception as exc:
            return exc

    @staticmethod
    def _cancel(futures: dict[str, asyncio.Future[DataKey]]) -> None:
        for future in futures.values():
            future.cancel()

    def _refuse_queued(self) -> None:
        error = KeyLoaderClosed("the data-key loader closed before this key was loaded")
        for future in self._queued.values():
            if not future.done():
                future.set_exception(error)
        self._queued.clear()

    async def aclose(self) -> None:
        """Refuse new and queued calls, let the group in progress finish, close the store."""
        if self._closed:
            return
        self._closed = True
        self._refuse_queued()
        loop = asyncio.get_running_loop()
        flusher = self._flusher
        if flusher is not None and not flusher.done() and flusher.get_loop() is loop:
            await asyncio.wait([flusher])  # a cancelled or failed flusher is no reason to stay
        try:
            await loop.run_in_executor(self._pool, self.sealer.keys.close)
        finally:
            self._pool.shutdown(wait=False)

    def close(self) -> None:
        """``aclose`` for synchronous callers (``install_sealer`` replacing a sealer,
        tests). Called on an event loop, it returns at once and the store closes on its
        thread after the group in progress; elsewhere it waits for that."""
        if self._closed:
            return
        self._closed = True
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        loop = self._loop
        if loop is not None and not loop.is_closed():
            if running is loop:
                self._refuse_queued()
            else:
                loop.call_soon_threadsafe(self._refuse_queued)
        self._pool.submit(self.sealer.keys.close)
        self._pool.shutdown(wait=running is None)

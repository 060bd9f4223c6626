"""Data keys for the gateway's event loop: new shoppers' keys are made on the key store's
own thread, many in one transaction, and the loop keeps running while they commit."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pii import gateway as pii_gateway
from pii.aead import DataKey
from pii.errors import PiiError, TamperedError
from pii.keyloader import KeyLoader, KeyLoaderClosed
from pii.keystore import KeyStore
from pii.sealing import Sealer, Unsealer
from tests.support.stores import STORE_KINDS, config_with, store_url

DETAILS: dict[str, Any] = {"email": "shopper@example.org", "city": "Lyon"}


@pytest.fixture(params=STORE_KINDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with store_url(request.param, tmp_path) as u:
        yield u


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return "sqlite:///" + str(tmp_path / "orders.db")


class SpyStore:
    """Wraps a store's ``get_or_create_many``: records each group and the thread it ran
    on, and can be slowed down or made to fail (test-only)."""

    def __init__(self, keys: KeyStore) -> None:
        self.real = keys.get_or_create_many
        self.groups: list[list[str]] = []
        self.threads: set[str] = set()
        self.delay_s = 0.0
        self.fail_next: list[Exception] = []
        self.during: Callable[[], None] | None = None
        keys.get_or_create_many = self  # type: ignore[method-assign]

    def __call__(self, user_ids: Iterable[str], now_ms: int | None = None) -> dict[str, DataKey]:
        users = list(user_ids)
        self.groups.append(users)
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.during is not None:
            self.during()
        if self.fail_next:
            raise self.fail_next.pop(0)
        return self.real(users, now_ms)


@pytest.fixture
async def rig(sqlite_url: str, tmp_path: Path) -> AsyncIterator[tuple[KeyLoader, SpyStore]]:
    keys = KeyStore.open(config_with(sqlite_url, tmp_path))
    loader = KeyLoader(Sealer(keys), max_group=16)
    spy = SpyStore(keys)
    try:
        yield loader, spy
    finally:
        await asyncio.wait_for(loader.aclose(), 10)


def stored_keys(keys: KeyStore) -> int:
    return int(keys.db.query("SELECT COUNT(*) FROM data_keys")[0][0])


async def test_new_shoppers_sealing_together_share_few_commits(url: str, tmp_path: Path) -> None:
    config = config_with(url, tmp_path)
    sealer = pii_gateway.install_sealer(config)
    try:
        users = [f"shopper{i}" for i in range(300)]
        texts = await asyncio.gather(
            *(pii_gateway.seal_details_async(u, {**DETAILS, "n": u}) for u in users)
        )
        loader = pii_gateway._loader
        assert loader is not None
        # All 300 were waiting before the first group left: two groups (256 + 44).
        assert loader.groups == sealer.lookups == 2 and loader.largest_group == 256
        again = await pii_gateway.seal_details_async("shopper7", {**DETAILS, "n": "shopper7"})
        assert again == texts[7] and loader.groups == 2  # a cache hit: no store, no thread
    finally:
        pii_gateway.uninstall_sealer()
    keys = KeyStore.open(config)
    try:
        assert stored_keys(keys) == len(users)
        for user, text in zip(users, texts, strict=True):
            opened = Unsealer(keys).unseal(text)
            assert opened.user_id == user and opened.details == {**DETAILS, "n": user}
    finally:
        keys.close()


async def test_groups_are_bounded_and_run_on_the_stores_own_thread(
    rig: tuple[KeyLoader, SpyStore],
) -> None:
    loader, spy = rig
    keys = await asyncio.gather(*(loader.key(f"u{i}") for i in range(40)))
    assert [k.user_id for k in keys] == [f"u{i}" for i in range(40)]
    assert [len(g) for g in spy.groups] == [16, 16, 8]
    assert loader.groups == 3
    assert len(spy.threads) == 1 and spy.threads.pop().startswith("pii-keys")


async def test_one_new_shopper_asked_for_many_times_gets_one_key(
    rig: tuple[KeyLoader, SpyStore],
) -> None:
    loader, spy = rig
    spy.delay_s = 0.05
    calls = [asyncio.ensure_future(loader.key("newcomer")) for _ in range(20)]
    await asyncio.sleep(0)
    calls[0].cancel()  # a caller that gives up does not take the others down with it
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert {k.key_id for k in results[1:]} == {loader.sealer.keys.current("newcomer").key_id}  # type: ignore[union-attr]
    assert spy.groups == [["newcomer"]]


async def test_the_loop_keeps_running_while_a_group_commits(
    rig: tuple[KeyLoader, SpyStore],
) -> None:
    loader, spy = rig
    spy.delay_s = 0.3
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.ensure_future(ticker())
    try:
        started = time.monotonic()
        await asyncio.gather(*(loader.key(f"u{i}") for i in range(8)))
        assert time.monotonic() - started >= 0.3
    finally:
        ticking.cancel()
    assert ticks >= 5  # a blocked loop would have ticked at most once
    assert threading.main_thread().name not in spy.threads


async def test_a_store_error_fails_its_group_and_the_next_group_works(
    rig: tuple[KeyLoader, SpyStore],
) -> None:
    loader, spy = rig
    spy.fail_next.append(sqlite3.OperationalError("disk I/O error"))
    failed = await asyncio.gather(*(loader.key(f"u{i}") for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, sqlite3.OperationalError) for r in failed)
    assert stored_keys(loader.sealer.keys) == 0
    keys = await asyncio.gather(*(loader.key(f"u{i}") for i in range(5)))
    assert stored_keys(loader.sealer.keys) == 5 and len({k.key_id for k in keys}) == 5


async def test_a_key_that_does_not_open_fails_only_its_shopper(
    rig: tuple[KeyLoader, SpyStore],
) -> None:
    loader, spy = rig
    store = loader.sealer.keys
    store.get_or_create("alice")
    store.get_or_create("bob")
    with store.db.transaction() as tx:
        tx.execute(
            "UPDATE data_keys SET wrapped = (SELECT wrapped FROM data_keys WHERE user_id = "
            "'alice') WHERE user_id = 'bob'"
        )
    spy.groups.clear()
    results = await asyncio.gather(
        loader.key("carol"), loader.key("bob"), loader.key(""), loader.key("dave"),
        return_exceptions=True,
    )
    assert isinstance(results[1], TamperedError)
    assert isinstance(results[2], PiiError)  # a bad id fails alone, before any group
    assert [r.user_id for r in (results[0], results[3])] == ["carol", "dave"]  # type: ignore[union-attr]
    # One group, then each shopper alone once bob's key failed to open.
    assert spy.groups == [["carol", "bob", "dave"], ["carol"], ["bob"], ["dave"]]
    assert stored_keys(store) == 4


async def test_closing_with_calls_pending_finishes_the_group_and_refuses_the_rest(
    rig: tuple[KeyLoader, SpyStore],
) -> None:
    loader, spy = rig
    spy.delay_s = 0.2
    loading = [asyncio.ensure_future(loader.key(f"a{i}")) for i in range(16)]
    await asyncio.sleep(0.05)  # the first group is on the store's thread now
    queued = [asyncio.ensure_future(loader.key(f"b{i}")) for i in range(5)]
    await asyncio.sleep(0)
    await asyncio.wait_for(loader.aclose(), 5)
    assert all(k.user_id == f"a{i}" for i, k in enumerate(await asyncio.gather(*loading)))
    refused = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(r, KeyLoaderClosed) for r in refused)
    with pytest.raises(KeyLoaderClosed):
        await loader.key("late")
    assert spy.groups == [[f"a{i}" for i in range(16)]]


async def test_closing_synchronously_on_the_loop_does_not_wait(
    rig: tuple[KeyLoader, SpyStore],
) -> None:
    loader, spy = rig
    spy.delay_s = 0.3
    loading = asyncio.ensure_future(loader.key("a"))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(loader.key("b"))
    await asyncio.sleep(0)
    started = time.monotonic()
    loader.close()
    assert time.monotonic() - started < 0.1
    assert (await asyncio.wait_for(loading, 5)).user_id == "a"
    with pytest.raises(KeyLoaderClosed):
        await queued


def test_a_key_forgotten_while_loading_is_not_cached(sqlite_url: str, tmp_path: Path) -> None:
    keys = KeyStore.open(config_with(sqlite_url, tmp_path))
    try:
        sealer = Sealer(keys)
        spy = SpyStore(keys)
        spy.during = lambda: sealer.forget("alice")  # an erasure during the lookup
        assert sealer.load(["alice"])["alice"].user_id == "alice"
        assert sealer.cached_key("alice") is None
        spy.during = None
        sealer.load(["alice"])
        assert sealer.cached_key("alice") is not None
    finally:
        keys.close()


async def test_the_sealer_context_installs_and_closes_its_own_sealer(
    sqlite_url: str, tmp_path: Path
) -> None:
    context = pii_gateway.sealer_context(config_with(sqlite_url, tmp_path))(None)
    await context.__anext__()
    text = await pii_gateway.seal_details_async("alice", DETAILS)
    assert text.startswith("v1.")
    with pytest.raises(StopAsyncIteration):
        await context.__anext__()
    with pytest.raises(pii_gateway.SealerNotInstalled):
        await pii_gateway.seal_details_async("alice", DETAILS)


async def test_a_prefetched_key_is_stored_and_then_served_from_the_cache(
    rig: tuple[KeyLoader, SpyStore],
) -> None:
    loader, spy = rig
    assert loader.prefetch("alice") is True
    assert loader.prefetch("alice") is False  # already on its way: one load
    async with asyncio.timeout(5):
        while loader.sealer.cached_key("alice") is None:
            await asyncio.sleep(0.005)
    assert spy.groups == [["alice"]]
    stored = loader.sealer.keys.current("alice")
    assert stored is not None and stored == await loader.key("alice")
    assert loader.prefetch("alice") is False  # cached: nothing to do
    assert spy.groups == [["alice"]] and loader.prefetched == 1


async def test_a_checkout_joins_the_load_its_prefetch_started(
    rig: tuple[KeyLoader, SpyStore],
) -> None:
    loader, spy = rig
    spy.delay_s = 0.1
    assert loader.prefetch("carol")
    await asyncio.sleep(0.02)  # the prefetch's group is on the store's thread
    assert not loader.prefetch("carol")
    key = await loader.key("carol")
    assert spy.groups == [["carol"]] and key == loader.sealer.keys.current("carol")


async def test_prefetches_are_bounded(
    rig: tuple[KeyLoader, SpyStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    loader, spy = rig
    monkeypatch.setattr("pii.keyloader.MAX_PREFETCH_QUEUED", 3)
    spy.delay_s = 0.2
    assert loader.prefetch("u0")
    await asyncio.sleep(0.05)  # u0's group is loading; what follows queues behind it
    assert [loader.prefetch(f"u{i}") for i in range(1, 6)] == [True, True, True, False, False]
    # A checkout is never refused by the bound: it joins the queue and gets its key.
    assert (await loader.key("u5")).user_id == "u5"
    assert spy.groups == [["u0"], ["u1", "u2", "u3", "u5"]]
    assert loader.sealer.keys.current("u4") is None


async def test_a_failed_prefetch_bothers_no_one_and_the_checkout_tries_again(
    rig: tuple[KeyLoader, SpyStore],
) -> None:
    loader, spy = rig
    unhandled: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
    spy.fail_next.append(sqlite3.OperationalError("disk I/O error"))
    assert loader.prefetch("dave")
    async with asyncio.timeout(5):
        while len(spy.groups) < 1 or loader._queued or loader._loading:
            await asyncio.sleep(0.005)
    gc.collect()  # an unretrieved exception would be reported when its future goes
    await asyncio.sleep(0)
    assert unhandled == []
    assert loader.sealer.cached_key("dave") is None
    assert (await loader.key("dave")).user_id == "dave"
    assert spy.groups == [["dave"], ["dave"]]


async def test_prefetch_skips_bad_ids_and_a_closed_loader(
    rig: tuple[KeyLoader, SpyStore],
) -> None:
    loader, spy = rig
    assert loader.prefetch("not a user id!") is False
    await loader.aclose()
    assert loader.prefetch("erin") is False
    assert spy.groups == [] and loader.prefetched == 0


def test_prefetch_without_a_sealer_does_nothing() -> None:
    pii_gateway.uninstall_sealer()
    assert pii_gateway.prefetch_key("frank") is False


async def test_prefetch_leaves_a_loader_busy_on_another_loop_alone(
    rig: tuple[KeyLoader, SpyStore],
) -> None:
    loader, spy = rig
    other = asyncio.new_event_loop()
    try:
        loader._loop = other  # keys pending there: binding to this loop would raise
        loader._queued["someone"] = other.create_future()
        assert loader.prefetch("grace") is False
        assert "grace" not in loader._queued and spy.groups == []
    finally:
        loader._queued.clear()
        loader._loop = None
        other.close()

"""The nemesis' TCP proxy: forwards, cuts silently, heals with fresh connections, delays
without reordering; and the control API drives it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from chaos.proxy import MAX_DELAY_MS, Link, LinkSpec, ProxyControl, create_control_app
from chaos.topology import free_ports
from cluster.config import HostPort

LOOPBACK = "127.0.0.1"
DEADLINE_S = 10.0


class Echo:
    """A TCP server that echoes and counts what it received."""

    def __init__(self) -> None:
        self.received = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> HostPort:
        self.server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        return HostPort(LOOPBACK, self.server.sockets[0].getsockname()[1])

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                self.received += len(data)
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()


@pytest.fixture
async def link() -> AsyncIterator[tuple[Link, Echo]]:
    echo = Echo()
    target = await echo.start()
    lk = Link(LinkSpec("a-b", HostPort(LOOPBACK, free_ports(1)[0]), target))
    await lk.start()
    try:
        yield lk, echo
    finally:
        await lk.stop()
        assert echo.server is not None
        echo.server.close()


async def closed(r: asyncio.StreamReader) -> bool:
    """Read until the peer closes; True on a clean end or a reset."""
    try:
        while await asyncio.wait_for(r.read(65536), DEADLINE_S):
            pass
    except ConnectionResetError:
        pass
    return True


async def connect(lk: Link) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(lk.spec.listen.host, lk.spec.listen.port)


async def test_a_passing_link_forwards_both_ways(link: tuple[Link, Echo]) -> None:
    lk, _ = link
    r, w = await connect(lk)
    w.write(b"hello")
    assert await asyncio.wait_for(r.readexactly(5), DEADLINE_S) == b"hello"
    w.close()


async def test_a_cut_drops_everything_and_healing_resets_the_survivors(
    link: tuple[Link, Echo],
) -> None:
    lk, echo = link
    r, w = await connect(lk)
    w.write(b"before")
    assert await asyncio.wait_for(r.readexactly(6), DEADLINE_S) == b"before"
    lk.set(cut=True)
    w.write(b"during the cut")
    await w.drain()
    r2, w2 = await connect(lk)  # a connection made during the cut is silent too
    w2.write(b"also dropped")
    await w2.drain()
    lk.set(cut=False)
    # The connections that lived through the cut are closed by the heal...
    assert await closed(r)
    assert await closed(r2)
    # ...and nothing sent during the cut ever reached the target.
    assert echo.received == len(b"before")
    r3, w3 = await connect(lk)
    w3.write(b"after")
    assert await asyncio.wait_for(r3.readexactly(5), DEADLINE_S) == b"after"
    for writer in (w, w2, w3):
        writer.close()


async def test_a_delayed_link_keeps_the_order_of_the_stream(link: tuple[Link, Echo]) -> None:
    lk, _ = link
    lk.set(delay_ms=40)
    r, w = await connect(lk)
    chunks = [f"chunk-{i:03d};".encode() for i in range(50)]
    for i, chunk in enumerate(chunks):
        w.write(chunk)
        await w.drain()
        if i == 25:
            lk.set(delay_ms=0)  # a shorter delay must not overtake what is queued
    expected = b"".join(chunks)
    assert await asyncio.wait_for(r.readexactly(len(expected)), DEADLINE_S) == expected
    w.close()


def test_a_delay_out_of_bounds_is_refused() -> None:
    lk = Link(LinkSpec("x", HostPort(LOOPBACK, 1), HostPort(LOOPBACK, 2)))
    with pytest.raises(ValueError, match="delay_ms"):
        lk.set(delay_ms=MAX_DELAY_MS + 1)
    with pytest.raises(ValueError, match="delay_ms"):
        lk.set(delay_ms=-1)


async def test_the_control_api_cuts_heals_and_reports(link: tuple[Link, Echo]) -> None:
    lk, _ = link
    async with TestClient(TestServer(create_control_app({"a-b": lk}))) as client:
        resp = await client.post("/links/a-b", json={"cut": True, "delay_ms": 5})
        assert resp.status == 200
        assert (await resp.json())["cut"] is True
        assert lk.is_cut() and lk.delay_ms == 5
        resp = await client.post("/heal")
        assert resp.status == 200
        assert not lk.is_cut() and lk.delay_ms == 0
        assert (await client.post("/links/nope", json={"cut": True})).status == 404
        assert (await client.post("/links/a-b", json={"cut": "yes"})).status == 400
        assert (await client.post("/links/a-b", json={"delay_ms": 10**9})).status == 400
        state = await (await client.get("/links")).json()
        assert state["a-b"]["target"] == str(lk.spec.target)


def test_link_specs_round_trip_and_refuse_garbage() -> None:
    spec = LinkSpec("n2-n1", HostPort(LOOPBACK, 4000), HostPort(LOOPBACK, 5000))
    assert LinkSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError):
        LinkSpec.from_json({"name": "", "listen": "x:1", "target": "y:2"})
    with pytest.raises(ValueError):
        LinkSpec.from_json({"name": "a", "listen": "nonsense", "target": "y:2"})


async def test_a_session_can_reach_the_control_api_over_tcp(link: tuple[Link, Echo]) -> None:
    """ProxyControl, the nemesis' client, against the real app on a real port."""
    lk, _ = link
    async with (
        TestServer(create_control_app({"a-b": lk})) as server,
        aiohttp.ClientSession() as session,
    ):
        control = ProxyControl(session, HostPort(LOOPBACK, server.port or 0))
        await control.set("a-b", cut=True)
        assert lk.is_cut()
        await control.heal()
        assert not lk.is_cut()
        assert (await control.links())["a-b"]["cut"] is False

"""The overload run's HAProxy front (loadtests/harness/haproxy.py), run for real in front
of an aiohttp server: reads and writes have separate slots, a request that finds no slot
is answered the gateway's 503 ``overloaded`` with Retry-After after the queue wait, on a
connection that stays open. Skipped where Debian's haproxy is not installed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from loadtests.harness import haproxy
from tests.support.cluster import free_ports

try:
    HAPROXY = haproxy.executable()
except RuntimeError:
    HAPROXY = ""

needs_haproxy = pytest.mark.skipif(not HAPROXY, reason="haproxy is not installed")


@dataclass(frozen=True)
class Front:
    url: str  # HAProxy's address
    release: asyncio.Event  # set: /slow answers
    held: asyncio.Event  # set once a /slow request reached the server
    directory: Path  # where the config and the stats socket are


def test_the_error_answer_is_the_gateways_overloaded_problem() -> None:
    head, _, body = haproxy.error_answer().partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Retry-After"] == "1"
    assert headers["Content-Type"] == "application/problem+json"
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body)["type"] == "https://flashsale.dev/problems/overloaded"


def test_every_gateway_is_a_server_of_both_backends_with_its_slots() -> None:
    text = haproxy.render("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"], Path("/e"),
                          haproxy.FrontLimits(write_slots=7, read_slots=5, queue_ms=9))  # fmt: skip
    writes, reads = text.split("\nbackend writes")[1].split("\nbackend reads")
    assert "server g1 127.0.0.1:2 maxconn 7" in writes
    assert "server g2 127.0.0.1:3 maxconn 7" in writes
    assert "server g1 127.0.0.1:2 maxconn 5" in reads
    assert "server g2 127.0.0.1:3 maxconn 5" in reads
    assert "timeout queue 9ms" in text


@needs_haproxy
def test_haproxy_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    config = haproxy.write_config(tmp_path, "127.0.0.1:1", ["127.0.0.1:2"], haproxy.FrontLimits())
    check = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@contextlib.asynccontextmanager
async def _in_front_of(
    app: web.Application, directory: Path, limits: haproxy.FrontLimits
) -> AsyncIterator[str]:
    """Serve ``app`` on loopback with HAProxy in front of it; HAProxy's address. Both are
    stopped at the end (HAProxy by pid)."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    (front_port,) = free_ports(1)
    listen = f"127.0.0.1:{front_port}"
    config = haproxy.write_config(directory, listen, [f"{host}:{port}"], limits)
    proc = haproxy.spawn(config, subprocess.DEVNULL)
    try:
        await asyncio.to_thread(haproxy.wait_listening, listen, proc)
        yield listen
    finally:
        proc.kill()
        proc.wait(10)
        with contextlib.suppress(Exception):
            await runner.cleanup()


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[Front]:
    """HAProxy with one write slot and one read slot in front of a server whose
    ``/slow`` answers once ``release`` is set (``held`` is set when one arrives)."""
    release, held = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        held.set()
        await release.wait()
        return web.json_response({"slow": True})

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"fast": True})

    app = web.Application()
    app.router.add_post("/slow", slow)
    app.router.add_get("/slow", slow)
    app.router.add_get("/fast", fast)
    app.router.add_post("/fast", fast)
    limits = haproxy.FrontLimits(write_slots=1, read_slots=1, queue_ms=200)
    async with _in_front_of(app, tmp_path, limits) as listen:
        try:
            yield Front(f"http://{listen}", release, held, tmp_path)
        finally:
            release.set()  # before the server's cleanup, which waits for its handlers


@needs_haproxy
async def test_a_request_without_a_slot_is_shed_with_retry_after_and_reads_keep_theirs(
    front: Front,
) -> None:
    url, release, directory = front.url, front.release, front.directory
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(session.post(url + "/slow"))  # takes the one write slot
        await asyncio.wait_for(front.held.wait(), 10)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with session.post(url + "/fast") as shed:
            waited = loop.time() - started
            assert shed.status == 503
            assert shed.headers["Retry-After"] == "1"
            assert shed.headers["Content-Type"] == "application/problem+json"
            assert (await shed.json())["type"] == "https://flashsale.dev/problems/overloaded"
        assert waited >= 0.15  # it waited in the queue (200 ms) for the slot first
        # The read backend has its own slot: a read is answered while the write waits.
        async with session.get(url + "/fast") as read:
            assert read.status == 200
        release.set()
        async with await held as answer:
            assert answer.status == 200
        # Once the slot is free, the next write goes through.
        async with session.post(url + "/fast") as after:
            assert after.status == 200
    # HAProxy's own account, as the overload run samples it from the stats socket.
    rows = await asyncio.to_thread(haproxy.stats, directory)
    assert int(rows["writes/BACKEND"]["hrsp_5xx"]) == 1
    assert int(rows["writes/BACKEND"]["hrsp_2xx"]) == 2
    assert int(rows["reads/BACKEND"]["hrsp_2xx"]) == 1


@needs_haproxy
async def test_a_shed_answer_keeps_the_connection_open(
    front: Front,
) -> None:
    url = front.url
    host, port = url.removeprefix("http://").rsplit(":", 1)
    holder = asyncio.create_task(_hold(host, int(port), b"POST /slow HTTP/1.1\r\nHost: t\r\n"
                                       b"Content-Length: 0\r\n\r\n"))  # fmt: skip
    await asyncio.wait_for(front.held.wait(), 10)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for _ in range(2):  # two sheds on the same connection
            writer.write(b"POST /fast HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 503")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
    finally:
        writer.close()
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holder


async def _hold(host: str, port: int, request: bytes) -> None:
    """Send ``request`` and wait (for an answer that ``/slow`` never gives)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await reader.read(1)  # until the test cancels it
    finally:
        writer.close()


@needs_haproxy
async def test_connections_to_the_gateway_are_reused_with_many_shoppers_connected(
    tmp_path: Path,
) -> None:
    """HAProxy stops keeping idle server connections past a share of its file descriptors
    (a quarter by default): with 80 shoppers' connections open under maxconn 100, every
    request opened a new connection to the gateway. The config raises that share."""

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"fast": True})

    app = web.Application()
    app.router.add_get("/fast", fast)
    idle: list[asyncio.StreamWriter] = []
    async with _in_front_of(app, tmp_path, haproxy.FrontLimits(max_connections=100)) as listen:
        try:
            host, port = listen.rsplit(":", 1)
            for _ in range(80):
                _, writer = await asyncio.open_connection(host, int(port))
                idle.append(writer)
            async with aiohttp.ClientSession() as session:
                for _ in range(30):
                    async with session.get(f"http://{listen}/fast") as answer:
                        assert answer.status == 200
            rows = await asyncio.to_thread(haproxy.stats, tmp_path)
            assert int(rows["reads/BACKEND"]["connect"]) <= 2
            assert int(rows["reads/BACKEND"]["reuse"]) >= 28
        finally:
            for writer in idle:
                writer.close()

"""The overload run's open-loop client (loadtests/harness/open_loop.py): what it makes of
answers, and how it treats connections, against a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.problems import overloaded
from loadtests.harness.open_loop import Answer, OpenLoop, parse_answer


def test_parse_answer_waits_for_the_whole_body_then_reads_the_problem() -> None:
    body = b'{"type":"https://flashsale.dev/problems/sold-out","title":"Sold out"}'
    whole = (
        b"HTTP/1.1 409 Conflict\r\nContent-Type: application/problem+json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert parse_answer(bytearray(whole[:20])) is None
    assert parse_answer(bytearray(whole[:-1])) is None
    following = b"HTTP/1.1 200 OK\r\n"
    parsed = parse_answer(bytearray(whole + following))
    assert parsed == (len(whole), Answer(409, "sold-out", False), False)


def test_parse_answer_sees_retry_after_and_connection_close_in_any_case() -> None:
    raw = bytearray(b"HTTP/1.1 503 Service Unavailable\r\nRETRY-AFTER: 1\r\n"
                    b"Connection: close\r\ncontent-length: 0\r\n\r\n")  # fmt: skip
    assert parse_answer(raw) == (len(raw), Answer(503, "", True), True)


def test_parse_answer_without_content_length_is_an_empty_body() -> None:
    raw = bytearray(b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n")
    assert parse_answer(raw) == (len(raw), Answer(204, "", False), False)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int]]:
    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)
        return web.json_response({"ok": True})

    async def shed(request: web.Request) -> web.Response:
        return overloaded("busy").response(request.path)

    async def close(request: web.Request) -> web.Response:
        return web.Response(text="bye", headers={"Connection": "close"})

    app = web.Application()
    app.router.add_get("/fast", fast)
    app.router.add_get("/slow", slow)
    app.router.add_get("/shed", shed)
    app.router.add_get("/close", close)
    runner = web.AppRunner(app, keepalive_timeout=0.3)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield host, port
    finally:
        await runner.cleanup()


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


async def _one(client: OpenLoop, path: str) -> tuple[Answer | None, str]:
    out: asyncio.Future[tuple[Answer | None, str]] = asyncio.get_running_loop().create_future()
    client.submit(_get(path), lambda answer, label: out.set_result((answer, label)))
    return await out


async def test_answers_come_back_on_one_kept_alive_connection(
    server: tuple[str, int],
) -> None:
    host, port = server
    with OpenLoop(host, port, max_connections=4, timeout_s=5) as client:
        assert await _one(client, "/fast") == (Answer(200, "", False), "")
        assert await _one(client, "/shed") == (Answer(503, "overloaded", True), "")
        assert await _one(client, "/fast") == (Answer(200, "", False), "")
        assert client.peak_open == 1  # sequential requests reuse the connection
        assert client.pending == 0


async def test_a_connection_the_server_closes_is_not_reused(
    server: tuple[str, int],
) -> None:
    host, port = server
    with OpenLoop(host, port, max_connections=4, timeout_s=5) as client:
        assert (await _one(client, "/close"))[0] == Answer(200, "", False)
        assert client.idle == []
        assert (await _one(client, "/fast"))[0] == Answer(200, "", False)


async def test_a_reused_connection_closed_unanswered_is_resent_once_on_a_new_one() -> None:
    # The race of a keep-alive timeout: the server closes an idle connection just as a
    # request goes out on it. This server answers the first request of each connection
    # and closes on the second without a word.
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            pass  # the client closed first (the test's end)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        with OpenLoop(host, port, max_connections=4, timeout_s=5) as client:
            assert await _one(client, "/a") == (Answer(200, "", False), "")
            assert await _one(client, "/b") == (Answer(200, "", False), "")
            assert connections == 2
            assert client.pending == 0
    finally:
        server.close()
        await server.wait_closed()


async def test_beyond_max_connections_a_request_is_not_sent(
    server: tuple[str, int],
) -> None:
    host, port = server
    slow: asyncio.Future[tuple[Answer | None, str]] = asyncio.get_running_loop().create_future()
    with OpenLoop(host, port, max_connections=1, timeout_s=5) as client:
        client.submit(_get("/slow"), lambda a, label: slow.set_result((a, label)))
        while not client.busy:  # the one connection is open and its request sent
            await asyncio.sleep(0.01)
        assert await _one(client, "/fast") == (None, "not-sent")
        assert client.pending == 1
    # Closing the client answers what was still waiting.
    assert (await slow)[1].startswith("connection:")


async def test_a_request_unanswered_past_the_timeout_fails_as_timeout(
    server: tuple[str, int],
) -> None:
    host, port = server
    with OpenLoop(host, port, max_connections=2, timeout_s=0.2) as client:
        assert await asyncio.wait_for(_one(client, "/slow"), 3) == (None, "timeout")
        await asyncio.wait_for(client.drained(), 1)

"""A userspace TCP proxy between Raft nodes that the nemesis can cut, heal and slow down.

Theory of operation: this machine's kernel has no ``tc netem`` and a chaos run must not
touch the host's firewall (other processes share the loopback), so partitions and delays
are made in userspace. Each ``Link`` listens on one address and forwards every accepted
connection to one target (a node's Raft port); ``chaos.routed_node`` makes each node
reach its peers through these listeners, so every Raft connection between two nodes
crosses exactly one link.

A link is in one of two states, plus a delay:

- passing: bytes are forwarded both ways, each chunk ``delay_ms`` after it arrived
  (order kept, so a delay never reorders a TCP stream);
- cut: a silent partition. Open connections stay open but every byte is read and
  dropped in both directions, and new connections are accepted and treated the same:
  the nodes see silence and time out, as behind a dropped network path. Healing closes
  the connections that lived through the cut (their streams lost bytes, so they can
  never carry valid messages again); the nodes reconnect at once.

``python -m chaos.proxy --links FILE --control HOST:PORT`` runs the links listed in the
JSON file (``[{"name", "listen", "target"}]``) and a small control API:
``GET /links``, ``POST /links/{name}`` ``{"cut": bool, "delay_ms": int}``, ``POST
/heal`` (every link passing, no delay) and ``GET /healthz``. ``ProxyControl`` is its
client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from cluster.config import ConfigError, HostPort, parse_hostport
from cluster.logs import setup_logging
from cluster.supervisor import die_with_parent

log = logging.getLogger("chaos.proxy")

CHUNK_BYTES = 64 * 1024  # one read from a socket
MAX_QUEUED_CHUNKS = 1024  # per direction; a full queue stops reading (backpressure)
MAX_DELAY_MS = 10_000  # the longest delay a link accepts
CONNECT_TIMEOUT_S = 2.0  # connecting to the target
CONTROL_TIMEOUT_S = 5.0  # one control request of ProxyControl


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One proxied path: connections to ``listen`` are forwarded to ``target``."""

    name: str
    listen: HostPort
    target: HostPort

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "listen": str(self.listen), "target": str(self.target)}

    @staticmethod
    def from_json(value: Mapping[str, Any]) -> LinkSpec:
        name = value.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"link {value!r}: expected a non-empty name")
        return LinkSpec(
            name,
            parse_hostport(value.get("listen"), f"{name}.listen"),
            parse_hostport(value.get("target"), f"{name}.target"),
        )


class _Pipe:
    """One proxied connection: two pumps, each a reader task and a delayed writer task."""

    def __init__(
        self,
        link: Link,
        down_r: asyncio.StreamReader,
        down_w: asyncio.StreamWriter,
        up_r: asyncio.StreamReader | None,
        up_w: asyncio.StreamWriter | None,
    ) -> None:
        self.link = link
        self.dropping = up_w is None  # born during a cut: never forwards anything
        self._writers = [w for w in (down_w, up_w) if w is not None]
        self._tasks: list[asyncio.Task[None]] = []
        if up_r is not None and up_w is not None:
            self._pump(down_r, up_w)
            self._pump(up_r, down_w)
        else:
            self._tasks.append(asyncio.create_task(self._drain(down_r)))

    def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(MAX_QUEUED_CHUNKS)
        self._tasks.append(asyncio.create_task(self._read(src, queue)))
        self._tasks.append(asyncio.create_task(self._write(queue, dst)))

    async def _read(
        self, src: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        last_due = 0.0
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(CHUNK_BYTES):
                if self.dropping:
                    continue
                self.link.bytes += len(data)
                # Never earlier than the chunk before: a shorter delay must not reorder.
                last_due = max(last_due, loop.time() + self.link.delay_ms / 1000)
                await queue.put((last_due, data))
        await queue.put(None)

    async def _write(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], dst: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError, OSError):
            while (item := await queue.get()) is not None:
                due, data = item
                if (wait_s := due - loop.time()) > 0:
                    await asyncio.sleep(wait_s)
                if self.dropping:
                    continue
                dst.write(data)
                await dst.drain()
        self.close()

    async def _drain(self, src: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while await src.read(CHUNK_BYTES):
                pass
        self.close()

    def close(self) -> None:
        """Abort both sockets (a reset, like a dead path finally noticed)."""
        for writer in self._writers:
            writer.transport.abort()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.link.pipes.discard(self)


class Link:
    """A listener forwarding to one target; see the module docstring."""

    def __init__(self, spec: LinkSpec) -> None:
        self.spec = spec
        self.cut = False
        self.delay_ms = 0
        self.bytes = 0
        self.accepted = 0
        self.pipes: set[_Pipe] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.spec.listen.host, self.spec.listen.port, reuse_address=True
        )

    async def stop(self) -> None:
        for pipe in list(self.pipes):
            pipe.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def set(self, *, cut: bool | None = None, delay_ms: int | None = None) -> None:
        if delay_ms is not None:
            if not 0 <= delay_ms <= MAX_DELAY_MS:
                raise ValueError(f"delay_ms={delay_ms}: expected 0..{MAX_DELAY_MS}")
            self.delay_ms = delay_ms
        if cut is True and not self.cut:
            for pipe in self.pipes:
                pipe.dropping = True
        elif cut is False and self.cut:
            for pipe in list(self.pipes):
                if pipe.dropping:
                    pipe.close()
        if cut is not None:
            self.cut = cut

    def is_cut(self) -> bool:
        return self.cut

    def state(self) -> dict[str, Any]:
        return {
            **self.spec.to_json(),
            "cut": self.cut,
            "delay_ms": self.delay_ms,
            "connections": len(self.pipes),
            "accepted": self.accepted,
            "bytes": self.bytes,
        }

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.cut:
            self.pipes.add(_Pipe(self, reader, writer, None, None))
            return
        target = self.spec.target
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                up_r, up_w = await asyncio.open_connection(target.host, target.port)
        except (TimeoutError, OSError):
            writer.transport.abort()  # the target is down: the node sees a refused peer
            return
        if self.is_cut():  # cut while connecting
            up_w.transport.abort()
            self.pipes.add(_Pipe(self, reader, writer, None, None))
            return
        self.pipes.add(_Pipe(self, reader, writer, up_r, up_w))


LINKS: web.AppKey[dict[str, Link]] = web.AppKey("links", dict)


def create_control_app(links: Mapping[str, Link]) -> web.Application:
    """The control API of a proxy process (see the module docstring)."""
    app = web.Application()
    app[LINKS] = dict(links)

    async def list_links(request: web.Request) -> web.Response:
        return web.json_response({n: lk.state() for n, lk in request.app[LINKS].items()})

    async def set_link(request: web.Request) -> web.Response:
        link = request.app[LINKS].get(request.match_info["name"])
        if link is None:
            raise web.HTTPNotFound(reason="no such link")
        body = await request.json()
        cut, delay_ms = body.get("cut"), body.get("delay_ms")
        if cut is not None and not isinstance(cut, bool):
            raise web.HTTPBadRequest(reason="cut must be a boolean")
        if delay_ms is not None and (isinstance(delay_ms, bool) or not isinstance(delay_ms, int)):
            raise web.HTTPBadRequest(reason="delay_ms must be an integer")
        try:
            link.set(cut=cut, delay_ms=delay_ms)
        except ValueError as exc:
            raise web.HTTPBadRequest(reason=str(exc)) from None
        log.info("link set", extra={"link": link.state()})
        return web.json_response(link.state())

    async def heal(request: web.Request) -> web.Response:
        for link in request.app[LINKS].values():
            link.set(cut=False, delay_ms=0)
        log.info("healed every link")
        return web.json_response({n: lk.state() for n, lk in request.app[LINKS].items()})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/links", list_links)
    app.router.add_post("/links/{name}", set_link)
    app.router.add_post("/heal", heal)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(specs: Sequence[LinkSpec], control: HostPort) -> None:
    """Run the links and the control API until cancelled or SIGTERM."""
    links = {s.name: Link(s) for s in specs}
    for link in links.values():
        await link.start()
    runner = web.AppRunner(create_control_app(links), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, control.host, control.port, reuse_address=True)
    await site.start()
    log.info("proxy ready", extra={"links": [s.to_json() for s in specs]})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        for link in links.values():
            await link.stop()


def read_links(path: Path) -> list[LinkSpec]:
    value = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(value, list):
        raise ValueError(f"{path}: expected a JSON list of links")
    return [LinkSpec.from_json(v) for v in value]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.proxy", description=__doc__)
    parser.add_argument("--links", required=True, type=Path, help="JSON file of the links")
    parser.add_argument("--control", required=True, help="host:port of the control API")
    args = parser.parse_args(argv)
    try:
        specs = read_links(args.links)
        control = parse_hostport(args.control, "--control")
    except (OSError, ValueError, ConfigError) as exc:
        print(f"python -m chaos.proxy: {exc}", file=sys.stderr)
        return 2
    die_with_parent()
    setup_logging("chaos-proxy")
    uvloop.run(serve(specs, control))
    return 0


class ProxyControl:
    """Client of a proxy process's control API."""

    def __init__(self, session: aiohttp.ClientSession, control: HostPort) -> None:
        self._session = session
        self._base = control.url

    async def _call(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        async with self._session.request(
            method,
            self._base + path,
            json=body,
            timeout=aiohttp.ClientTimeout(total=CONTROL_TIMEOUT_S),
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"proxy {method} {path}: HTTP {resp.status} {resp.reason}")
            value = await resp.json()
            if not isinstance(value, dict):
                raise RuntimeError(f"proxy {method} {path}: not a JSON object")
            return value

    async def set(self, name: str, *, cut: bool | None = None, delay_ms: int | None = None) -> None:
        body: dict[str, Any] = {}
        if cut is not None:
            body["cut"] = cut
        if delay_ms is not None:
            body["delay_ms"] = delay_ms
        await self._call("POST", f"/links/{name}", body)

    async def heal(self) -> None:
        await self._call("POST", "/heal")

    async def links(self) -> dict[str, Any]:
        return await self._call("GET", "/links")


if __name__ == "__main__":
    sys.exit(main())

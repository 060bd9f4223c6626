"""The comparison server: aiohttp + uvloop handlers that answer fixed bytes.

Whatever a gateway does beyond this (routing, middlewares, the edge cache, encoding) is
its overhead; this is the ceiling of one Python web process on the same core. The bytes
and headers are copied from the gateway's own answers (``save_answers``), so both send
the same response. ``GET /inventory/{id}`` answers the saved inventory body;
``POST /reserve-inventory`` and ``POST /add-to-cart`` read the request body and answer
the saved sold-out refusal (when one was saved).

``python -m loadtests.harness.bare HOST:PORT ANSWERS.json`` runs it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import uvloop
from aiohttp import web


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


def save_answers(path: Path, read: Answer, refusal: Answer | None = None) -> None:
    """Write the answers a bare server replays (JSON, bytes as hex)."""

    def enc(a: Answer) -> dict[str, object]:
        return {"status": a.status, "content_type": a.content_type, "body_hex": a.body.hex(),
                "headers": a.headers}  # fmt: skip

    doc: dict[str, object] = {**enc(read)}
    if refusal is not None:
        doc["post"] = enc(refusal)
    path.write_text(json.dumps(doc))


def _load(doc: dict[str, object]) -> Answer:
    headers = doc.get("headers")
    return Answer(
        status=int(str(doc.get("status", 200))),
        content_type=str(doc.get("content_type", "application/json")),
        body=bytes.fromhex(str(doc["body_hex"])),
        headers=dict(headers) if isinstance(headers, dict) else {},
    )


def make_app(answers_file: Path) -> web.Application:
    doc = json.loads(answers_file.read_text())
    read = _load(doc)
    refusal = _load(doc["post"]) if isinstance(doc.get("post"), dict) else None

    async def inventory(request: web.Request) -> web.Response:
        return web.Response(body=read.body, status=read.status, content_type=read.content_type,
                            headers=read.headers)  # fmt: skip

    async def reserve(request: web.Request) -> web.Response:
        await request.read()  # as the gateway must, to parse the body
        assert refusal is not None
        return web.Response(body=refusal.body, status=refusal.status,
                            content_type=refusal.content_type, headers=refusal.headers)  # fmt: skip

    app = web.Application()
    app.router.add_get("/inventory/{product_id}", inventory, allow_head=False)
    if refusal is not None:
        app.router.add_post("/reserve-inventory", reserve)
        app.router.add_post("/add-to-cart", reserve)
    return app


def serve(listen: str, answers_file: Path) -> None:
    """Serve the saved answers at ``listen`` (HOST:PORT) on uvloop until signalled."""
    host, _, port = listen.rpartition(":")
    web.run_app(
        make_app(answers_file),
        host=host,
        port=int(port),
        loop=uvloop.new_event_loop(),
        print=None,
        access_log=None,
        handle_signals=True,
    )


if __name__ == "__main__":
    serve(sys.argv[1], Path(sys.argv[2]))

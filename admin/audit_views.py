"""The audit log page: the newest operator actions, newest first."""

from __future__ import annotations

import json

from aiohttp import web

from admin import audit
from admin.app_keys import STORE
from admin.formatting import time_ms
from admin.layout import page
from admin.limits import MAX_AUDIT_ROWS_SHOWN
from admin.render import join, render, tag


async def audit_page(request: web.Request) -> web.StreamResponse:
    rows = audit.recent(request.app[STORE], MAX_AUDIT_ROWS_SHOWN)
    body = join(
        tag(
            "tr",
            [
                tag("td", time_ms(r.at_ms)),
                tag("td", r.operator),
                tag("td", r.action, data_k="action"),
                tag("td", r.target),
                tag("td", r.ip),
                tag("td", tag("code", json.dumps(r.details, sort_keys=True)[:400])),
            ],
            data_audit=str(r.id),
        )
        for r in rows
    )
    content = render("audit.html", {"rows": body, "limit": MAX_AUDIT_ROWS_SHOWN})
    return page(request, title="Audit log", page_id="audit", content=content)

"""The frame of every console page: navigation, who is signed in, sign-out, messages."""

from __future__ import annotations

from aiohttp import web

from admin.app_keys import CONFIG, STORE, session_of
from admin.render import Markup, join, render, tag
from admin.sessions import pop_flash

NAV = (
    ("/cluster", "Cluster", "cluster"),
    ("/sale", "Sale", "sale"),
    ("/orders", "Orders", "orders"),
    ("/bots", "Bots and queue", "bots"),
    ("/audit", "Audit log", "audit"),
)


def message(text: str, kind: str = "info") -> Markup:
    """A notice box (``info``, ``ok`` or ``error``)."""
    if not text:
        return Markup("")
    return tag("p", text, class_=f"notice {kind}", role="alert" if kind == "error" else None)


def csrf_field(request: web.Request) -> Markup:
    return tag("input", type="hidden", name="csrf_token", value=session_of(request).csrf_token)


def page(
    request: web.Request,
    *,
    title: str,
    page_id: str,
    content: Markup,
    status: int = 200,
    notice: Markup | None = None,
) -> web.Response:
    """A full console page around ``content``; shows (and clears) the session's flash."""
    session = session_of(request)
    flash = pop_flash(request.app[STORE], session)
    nav = join(
        tag("a", label, href=href, class_="current" if pid == page_id else None, id=f"nav-{pid}")
        for href, label, pid in NAV
    )
    rights = ", ".join(sorted(session.operator.rights)) or "look only"
    html = render(
        "layout.html",
        {
            "title": title,
            "page": page_id,
            "csrf": session.csrf_token,
            "cluster_name": request.app[CONFIG].name,
            "nav": nav,
            "username": f"{session.operator.username} ({rights})",
            "flash": join([message(flash, "ok"), notice or Markup("")]),
            "content": content,
        },
    )
    return web.Response(status=status, text=html, content_type="text/html")

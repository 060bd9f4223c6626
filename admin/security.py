"""Who may read or change anything in the console: the middlewares every request passes.

Theory of operation: ``auth_middleware`` lets through only the few public routes (the
sign-in page and its stylesheet, /healthz, and /metrics for a scraper holding the
internal token). Every other request needs a live session cookie; without one a page
request is redirected (303) to /login and anything else gets a 401 problem+json. A
state-changing request (any method but GET/HEAD/OPTIONS) must also carry the session's
CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``) and must not come from
another origin (``Origin`` / ``Sec-Fetch-Site``); otherwise 403. ``errors_middleware``
turns errors into problem+json for /api/ paths and into a small HTML page elsewhere, and
``harden_headers`` adds a strict Content-Security-Policy and friends to every response.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from admin import audit
from admin.app_keys import CLOCK_MS, CONFIG, SESSION_KEY, STORE
from admin.render import render
from admin.sessions import Session, csrf_ok, lookup
from cluster.auth import check_bearer

log = logging.getLogger("admin.security")

PROBLEM_BASE = "https://flashsale.dev/problems/"
UNAUTHENTICATED = PROBLEM_BASE + "unauthenticated"
CSRF_FAILED = PROBLEM_BASE + "csrf-failed"
FORBIDDEN = PROBLEM_BASE + "forbidden"
RATE_LIMITED = PROBLEM_BASE + "rate-limited"
NOT_FOUND = PROBLEM_BASE + "not-found"
INVALID_INPUT = PROBLEM_BASE + "invalid-input"
UNAVAILABLE = PROBLEM_BASE + "unavailable"
INTERNAL = PROBLEM_BASE + "internal"

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_COOKIE = "fs_admin"
SECURE_SESSION_COOKIE = "__Host-fs_admin"  # the prefix makes browsers insist on Secure, Path=/
PUBLIC_ROUTES = frozenset(
    {
        ("GET", "/login"),
        ("HEAD", "/login"),
        ("POST", "/login"),
        ("GET", "/static/login.css"),
        ("GET", "/healthz"),
    }
)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status: int, type_: str, title: str, detail: str = "", **extra: Any) -> web.Response:
    """An RFC 9457 problem+json response."""
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/problem+json",
    )


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def error_page(status: int, title: str, detail: str) -> web.Response:
    html = render("error.html", {"status": status, "title": title, "detail": detail})
    return web.Response(status=status, text=html, content_type="text/html")


def refuse(request: web.Request, status: int, type_: str, title: str, detail: str) -> web.Response:
    """problem+json for API paths, a small HTML page for page paths."""
    if is_api(request):
        return problem(status, type_, title, detail)
    return error_page(status, title, detail)


def session_cookie_name(request: web.Request) -> str:
    return SECURE_SESSION_COOKIE if request.secure else SESSION_COOKIE


def set_session_cookie(
    response: web.StreamResponse, request: web.Request, token: str, max_age_s: int
) -> None:
    response.set_cookie(
        session_cookie_name(request),
        token,
        max_age=max_age_s,
        path="/",
        secure=request.secure,
        httponly=True,
        samesite="Strict",
    )


def clear_session_cookie(response: web.StreamResponse, request: web.Request) -> None:
    response.del_cookie(
        session_cookie_name(request),
        path="/",
        secure=request.secure,
        httponly=True,
        samesite="Strict",
    )


def see_other(location: str) -> web.Response:
    """A 303 redirect as a plain response (so cookies can be set on it)."""
    return web.Response(status=303, headers={"Location": location})


def local_path(target: str | None) -> str:
    """``target`` when it is a path on this site, else "/" (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _same_origin(request: web.Request) -> bool:
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not sent by every client; the CSRF token still has to match
    return origin == f"{request.scheme}://{request.host}"


async def presented_csrf(request: web.Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def _metrics_allowed(request: web.Request) -> bool:
    return check_bearer(request.headers.get("Authorization"), request.app[CONFIG].secret)


def _audit_refusal(request: web.Request, session: Session, now_ms: int, why: str) -> None:
    # A refused write in a live session is a forged request or a stale tab: worth a row.
    log.warning("write refused", extra={"path": request.path, "why": why})
    audit.record(
        request.app[STORE],
        at_ms=now_ms,
        operator=session.operator.username,
        action="write.refused",
        target=request.path,
        details={"why": why, "method": request.method},
        ip=request.remote or "",
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if (request.method, request.path) in PUBLIC_ROUTES:
        return await handler(request)
    store = request.app[STORE]
    now_ms = request.app[CLOCK_MS]()
    session: Session | None = lookup(
        store, request.cookies.get(session_cookie_name(request)), now_ms=now_ms
    )
    if session is None:
        if request.method == "GET" and request.path == "/metrics" and _metrics_allowed(request):
            return await handler(request)
        if is_api(request) or request.path == "/metrics":
            return problem(401, UNAUTHENTICATED, "Sign in first", "no live console session")
        target = request.path_qs if request.method in ("GET", "HEAD") else request.path
        raise web.HTTPSeeOther(location=f"/login?next={quote(local_path(target), safe='/')}")
    request[SESSION_KEY] = session
    if request.method not in SAFE_METHODS:
        if not _same_origin(request):
            _audit_refusal(request, session, now_ms, "cross-origin")
            return refuse(request, 403, CSRF_FAILED, "Cross-origin request refused", "")
        if not csrf_ok(session, await presented_csrf(request)):
            _audit_refusal(request, session, now_ms, "csrf token missing or wrong")
            return refuse(
                request,
                403,
                CSRF_FAILED,
                "CSRF token missing or wrong",
                "reload the page and try again",
            )
    return await handler(request)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        title = exc.reason or "Error"
        detail = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else ""
        type_ = {404: NOT_FOUND, 403: FORBIDDEN, 401: UNAUTHENTICATED}.get(
            exc.status, PROBLEM_BASE + "http-" + str(exc.status)
        )
        response = refuse(request, exc.status, type_, title, detail)
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except Exception:
        log.exception("request failed", extra={"path": request.path, "method": request.method})
        return refuse(request, 500, INTERNAL, "Internal error", "the console logged the cause")


async def harden_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: security headers on every response, streams included."""
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on form
    # posts, and the origin check needs the real one.
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if request.path.startswith("/static/"):
        headers.setdefault("Cache-Control", "private, max-age=300")
    else:
        headers.setdefault("Cache-Control", "no-store")
    if request.secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")

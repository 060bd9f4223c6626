"""Signing in and out.

The sign-in form has no session yet to bind a CSRF token to, so it uses a double-submit
token: GET /login sets a random ``fs_login`` cookie (HttpOnly, SameSite=Strict) and puts
the same value in the form; POST /login refuses a form whose field does not match the
cookie. Every attempt, good, bad or rate-limited, is written to the audit log.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import re
import secrets

from aiohttp import web

from admin import audit
from admin.app_keys import CLOCK_MS, CONFIG, LIMITER, METRICS, STORE, session_of
from admin.layout import message
from admin.limits import MAX_USERNAME_LEN, SESSION_TTL_MS
from admin.operators import credentials, password_matches
from admin.render import Markup, render
from admin.security import (
    clear_session_cookie,
    error_page,
    local_path,
    see_other,
    session_cookie_name,
    set_session_cookie,
)
from admin.sessions import end_session, lookup, start_session

log = logging.getLogger("admin.login")

LOGIN_CSRF_COOKIE = "fs_login"
LOGIN_CSRF_MAX_AGE_S = 3600
_LOGIN_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32}$")


def client_ip(request: web.Request) -> str:
    return request.remote or ""


def _login_page(
    request: web.Request,
    *,
    next_path: str,
    username: str = "",
    notice: Markup | None = None,
    status: int = 200,
) -> web.Response:
    # Keep the token of an earlier visit: the browser may fetch this page more than once
    # (another tab, a favicon redirected here), and each fetch must not void the others.
    existing = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    token = existing if _LOGIN_TOKEN.match(existing) else secrets.token_urlsafe(24)
    html = render(
        "login.html",
        {
            "cluster_name": request.app[CONFIG].name,
            "message": notice or Markup(""),
            "login_csrf": token,
            "next": next_path,
            "username": username,
        },
    )
    response = web.Response(status=status, text=html, content_type="text/html")
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=LOGIN_CSRF_MAX_AGE_S,
        path="/login",
        secure=request.secure,
        httponly=True,
        samesite="Strict",
    )
    return response


async def login_form(request: web.Request) -> web.StreamResponse:
    next_path = local_path(request.query.get("next"))
    now_ms = request.app[CLOCK_MS]()
    token = request.cookies.get(session_cookie_name(request))
    if lookup(request.app[STORE], token, now_ms=now_ms) is not None:
        raise web.HTTPSeeOther(location=next_path)
    return _login_page(request, next_path=next_path)


async def login_submit(request: web.Request) -> web.StreamResponse:
    store, now_ms = request.app[STORE], request.app[CLOCK_MS]()
    form = await request.post()
    ip = client_ip(request)
    field = form.get("login_csrf")
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not isinstance(field, str) or not cookie or not hmac.compare_digest(field, cookie):
        return error_page(403, "Sign-in form expired", "Reload the sign-in page and try again.")
    username = str(form.get("username", "")).strip()[: MAX_USERNAME_LEN * 2]
    password = str(form.get("password", ""))
    next_path = local_path(str(form.get("next", "/")))

    limiter = request.app[LIMITER]
    wait_ms = limiter.check(ip, username.lower(), now_ms)
    if wait_ms:
        audit.record(store, at_ms=now_ms, operator=username, action="login.limited", ip=ip)
        request.app[METRICS].logins.labels("limited").inc()
        retry_s = math.ceil(wait_ms / 1000)
        response = _login_page(
            request,
            next_path=next_path,
            username=username,
            notice=message(f"Too many sign-in attempts. Try again in {retry_s} s.", "error"),
            status=429,
        )
        response.headers["Retry-After"] = str(retry_s)
        return response

    found = credentials(store, username)
    operator = await asyncio.to_thread(password_matches, found, password)
    if operator is None:
        limiter.failed(username.lower(), now_ms)
        audit.record(store, at_ms=now_ms, operator=username, action="login.failed", ip=ip)
        request.app[METRICS].logins.labels("failed").inc()
        log.info("sign-in refused", extra={"username": username, "ip": ip})
        return _login_page(
            request,
            next_path=next_path,
            username=username,
            notice=message("Wrong username or password.", "error"),
            status=401,
        )
    limiter.succeeded(username.lower())
    token, _session = start_session(store, operator, ip=ip, now_ms=now_ms)
    audit.record(store, at_ms=now_ms, operator=operator.username, action="login.ok", ip=ip)
    request.app[METRICS].logins.labels("ok").inc()
    log.info("signed in", extra={"username": operator.username, "ip": ip})
    response = see_other(next_path)
    set_session_cookie(response, request, token, SESSION_TTL_MS // 1000)
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    session = session_of(request)
    store, now_ms = request.app[STORE], request.app[CLOCK_MS]()
    end_session(store, session)
    audit.record(
        store,
        at_ms=now_ms,
        operator=session.operator.username,
        action="logout",
        ip=client_ip(request),
    )
    response = see_other("/login")
    clear_session_cookie(response, request)
    return response

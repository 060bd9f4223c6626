"""Operator sessions: random tokens in a cookie, kept server-side only as hashes.

Theory of operation: signing in creates a 256-bit random token; the browser gets the
token (in an HttpOnly, SameSite=Strict cookie) and the database keeps only its SHA-256,
so a copy of the database does not let anyone act as an operator. Each session also has
its own random CSRF token, which every state-changing request must echo (a hidden form
field or the ``X-CSRF-Token`` header). A session ends at sign-out, after
``SESSION_TTL_MS`` whatever happens, or after ``SESSION_IDLE_MS`` without a request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass

from admin.limits import (
    MAX_SESSIONS_PER_OPERATOR,
    SESSION_IDLE_MS,
    SESSION_TOUCH_MS,
    SESSION_TTL_MS,
)
from admin.operators import Operator, get_operator

TOKEN_BYTES = 32


@dataclass(frozen=True, slots=True)
class Session:
    token_hash: str
    operator: Operator
    csrf_token: str
    expires_at_ms: int


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def start_session(
    conn: sqlite3.Connection, operator: Operator, *, ip: str, now_ms: int
) -> tuple[str, Session]:
    """Create a session; returns the cookie token (shown once, never stored) and the session."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    csrf = secrets.token_urlsafe(TOKEN_BYTES)
    expires = now_ms + SESSION_TTL_MS
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT INTO sessions (token_hash, operator_id, csrf_token, created_at_ms, "
            "last_seen_ms, expires_at_ms, ip) VALUES (?,?,?,?,?,?,?)",
            (_hash(token), operator.id, csrf, now_ms, now_ms, expires, ip),
        )
        # Bound the sessions one account can hold: the oldest go first.
        conn.execute(
            "DELETE FROM sessions WHERE operator_id = ? AND token_hash NOT IN ("
            " SELECT token_hash FROM sessions WHERE operator_id = ?"
            " ORDER BY created_at_ms DESC, rowid DESC LIMIT ?)",
            (operator.id, operator.id, MAX_SESSIONS_PER_OPERATOR),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return token, Session(_hash(token), operator, csrf, expires)


def lookup(conn: sqlite3.Connection, token: str | None, *, now_ms: int) -> Session | None:
    """The live session of a cookie token, or None (unknown, expired, idle or disabled)."""
    if not token or len(token) > 200:
        return None
    token_hash = _hash(token)
    row = conn.execute(
        "SELECT operator_id, csrf_token, last_seen_ms, expires_at_ms FROM sessions "
        "WHERE token_hash = ?",
        (token_hash,),
    ).fetchone()
    if row is None:
        return None
    last_seen = int(row["last_seen_ms"])
    expires = int(row["expires_at_ms"])
    if now_ms >= expires or now_ms - last_seen >= SESSION_IDLE_MS:
        conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
        return None
    operator = get_operator(conn, int(row["operator_id"]))
    if operator is None:
        conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
        return None
    if now_ms - last_seen >= SESSION_TOUCH_MS:
        conn.execute(
            "UPDATE sessions SET last_seen_ms = ? WHERE token_hash = ?", (now_ms, token_hash)
        )
    return Session(token_hash, operator, str(row["csrf_token"]), expires)


def still_live(conn: sqlite3.Connection, session: Session, *, now_ms: int) -> bool:
    """True while the session has not ended (used by long-lived streams)."""
    row = conn.execute(
        "SELECT last_seen_ms, expires_at_ms FROM sessions WHERE token_hash = ?",
        (session.token_hash,),
    ).fetchone()
    if row is None:
        return False
    return now_ms < int(row["expires_at_ms"]) and now_ms - int(row["last_seen_ms"]) < (
        SESSION_IDLE_MS
    )


def end_session(conn: sqlite3.Connection, session: Session) -> None:
    conn.execute("DELETE FROM sessions WHERE token_hash = ?", (session.token_hash,))


def purge_expired(conn: sqlite3.Connection, *, now_ms: int) -> int:
    """Delete every ended session; returns how many."""
    cur = conn.execute(
        "DELETE FROM sessions WHERE expires_at_ms <= ? OR last_seen_ms <= ?",
        (now_ms, now_ms - SESSION_IDLE_MS),
    )
    return cur.rowcount


def csrf_ok(session: Session, presented: str | None) -> bool:
    """True when ``presented`` is this session's CSRF token (constant time)."""
    if not presented:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), session.csrf_token.encode("utf-8"))


def set_flash(conn: sqlite3.Connection, session: Session, message: str) -> None:
    """A one-time message shown on the next page (after a redirect)."""
    conn.execute(
        "UPDATE sessions SET flash = ? WHERE token_hash = ?", (message[:500], session.token_hash)
    )


def pop_flash(conn: sqlite3.Connection, session: Session) -> str:
    row = conn.execute(
        "SELECT flash FROM sessions WHERE token_hash = ?", (session.token_hash,)
    ).fetchone()
    if row is None or not row["flash"]:
        return ""
    conn.execute("UPDATE sessions SET flash = '' WHERE token_hash = ?", (session.token_hash,))
    return str(row["flash"])

"""Operator accounts: who may sign in to the console, and with which rights.

Rights: every signed-in operator may look (cluster, sale, orders, bots, audit log). The
right ``operator`` lets them change the sale (create and edit products, restock, open and
close it, tune the gateways' bot defences); ``pii`` lets them unseal a shopper's personal
data, one order at a time and audited.
The first account is made from the command line (``flashsale admin create-operator``),
which calls ``create_operator_cli``.
"""

from __future__ import annotations

import getpass
import re
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from admin import audit
from admin.limits import MAX_USERNAME_LEN
from admin.passwords import check_policy, hash_password, verify_dummy, verify_password
from admin.store import admin_db_path, open_store
from cluster.config import ClusterConfig

RIGHT_OPERATOR = "operator"  # may change the sale
RIGHT_PII = "pii"  # may unseal personal data
KNOWN_RIGHTS = (RIGHT_OPERATOR, RIGHT_PII)

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class OperatorError(ValueError):
    """An operator account cannot be created as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Operator:
    id: int
    username: str
    rights: frozenset[str]

    def may(self, right: str) -> bool:
        return right in self.rights


def normalize_username(username: str) -> str:
    """The stored form of a username (lower case); OperatorError when malformed."""
    name = username.strip().lower()
    if not name or len(name) > MAX_USERNAME_LEN or not _USERNAME.match(name):
        raise OperatorError(
            f"username {username!r}: expected 1..{MAX_USERNAME_LEN} characters of "
            "a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def parse_rights(rights: Iterable[str]) -> frozenset[str]:
    """Validate a list of rights; OperatorError names an unknown one."""
    out: set[str] = set()
    for right in rights:
        r = right.strip().lower()
        if not r:
            continue
        if r not in KNOWN_RIGHTS:
            raise OperatorError(f"unknown right {right!r}: expected some of {list(KNOWN_RIGHTS)}")
        out.add(r)
    return frozenset(out)


def _row_to_operator(row: sqlite3.Row) -> Operator:
    rights = frozenset(r for r in str(row["rights"]).split(",") if r)
    return Operator(id=int(row["id"]), username=str(row["username"]), rights=rights)


def create_operator(
    conn: sqlite3.Connection,
    username: str,
    password: str,
    rights: Iterable[str],
    *,
    at_ms: int,
    created_by: str,
    ip: str = "",
) -> Operator:
    """Create an account (audited); OperatorError / PasswordPolicyError when refused."""
    name = normalize_username(username)
    granted = parse_rights(rights)
    check_policy(password)
    password_hash = hash_password(password)
    conn.execute("BEGIN IMMEDIATE")
    try:
        try:
            cur = conn.execute(
                "INSERT INTO operators (username, password_hash, rights, created_at_ms) "
                "VALUES (?,?,?,?)",
                (name, password_hash, ",".join(sorted(granted)), at_ms),
            )
        except sqlite3.IntegrityError:
            raise OperatorError(f"operator {name!r} already exists") from None
        audit.record(
            conn,
            at_ms=at_ms,
            operator=created_by,
            action="operator.create",
            target=name,
            details={"rights": sorted(granted)},
            ip=ip,
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return Operator(id=int(cur.lastrowid or 0), username=name, rights=granted)


def get_operator(conn: sqlite3.Connection, operator_id: int) -> Operator | None:
    """The enabled account with this id, or None."""
    row = conn.execute(
        "SELECT id, username, rights FROM operators WHERE id = ? AND disabled = 0",
        (operator_id,),
    ).fetchone()
    return None if row is None else _row_to_operator(row)


@dataclass(frozen=True, slots=True)
class Credentials:
    operator: Operator
    password_hash: str


def credentials(conn: sqlite3.Connection, username: str) -> Credentials | None:
    """The stored credentials of an enabled account, or None (unknown or malformed name)."""
    try:
        name = normalize_username(username)
    except OperatorError:
        return None
    row = conn.execute(
        "SELECT id, username, rights, password_hash FROM operators "
        "WHERE username = ? AND disabled = 0",
        (name,),
    ).fetchone()
    if row is None:
        return None
    return Credentials(_row_to_operator(row), str(row["password_hash"]))


def password_matches(found: Credentials | None, password: str) -> Operator | None:
    """The account when ``password`` is right; None otherwise.

    Runs one scrypt derivation whether or not the account exists, so the time taken does
    not tell. Blocking (tens of milliseconds): a server calls it in a worker thread.
    """
    if found is None:
        verify_dummy(password)
        return None
    if not verify_password(password, found.password_hash):
        return None
    return found.operator


def count_operators(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM operators").fetchone()[0])


def create_operator_cli(
    config: ClusterConfig,
    username: str,
    password: str | None,
    rights: Sequence[str],
) -> int:
    """``flashsale admin create-operator``: create an account in the console database.

    ``password`` None asks for it twice on the terminal (so it stays out of the shell
    history). Prints what it did; returns the process exit code (0 created, 1 refused).
    """
    if password is None:
        password = getpass.getpass(f"password for {username}: ")
        if getpass.getpass("again: ") != password:
            print("passwords do not match", file=sys.stderr)
            return 1
    conn = open_store(admin_db_path(config.data_dir))
    try:
        op = create_operator(
            conn, username, password, rights, at_ms=int(time.time() * 1000), created_by="cli"
        )
    except ValueError as exc:  # OperatorError, PasswordPolicyError
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    shown = ", ".join(sorted(op.rights)) or "none (look only)"
    print(f"created operator {op.username!r} with rights: {shown}")
    return 0

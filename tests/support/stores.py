"""Order stores for tests: a SQLite file or a fresh schema of the machine's PostgreSQL.

``store_url(kind, directory)`` yields a storage URL; a PostgreSQL schema is made with a
unique name and dropped when the block ends, pass or fail, so test runs never see each
other's rows. ``TEST_POSTGRES_URL`` overrides the server (default: the local one).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from cluster.config import ClusterConfig, build_config

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
STORE_KINDS = ("sqlite", "postgresql")


@contextmanager
def postgres_schema(prefix: str = "t") -> Iterator[str]:
    """A URL whose connections use a new, empty schema (dropped afterwards)."""
    schema = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextmanager
def store_url(kind: str, directory: Path, name: str = "orders") -> Iterator[str]:
    """A storage URL of ``kind`` ("sqlite" or "postgresql")."""
    if kind == "sqlite":
        yield "sqlite:///" + str(directory / f"{name}.db")
    elif kind == "postgresql":
        with postgres_schema(name) as url:
            yield url
    else:
        raise ValueError(f"no store kind {kind!r}")


def config_with(
    url: str,
    directory: Path,
    *,
    pii: Mapping[str, Any] | None = None,
    mode: str = "development",
) -> ClusterConfig:
    """A one-node config whose storage is ``url`` (and [pii] is ``pii`` when given)."""
    data: dict[str, Any] = {
        "cluster": {"secret": "s" * 40, "mode": mode, "data_dir": str(directory / "var")},
        "nodes": [{"id": "n1", "raft": "127.0.0.1:1", "api": "127.0.0.1:2"}],
        "storage": {"url": url},
    }
    if pii is not None:
        data["pii"] = dict(pii)
    return build_config(data, directory)

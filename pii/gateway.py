"""The gateway's sealing, one per process: ``install_sealer(config)`` at start, then
``seal_details(user_id, details)`` for each checkout (``gateway.pii.seal_details``
calls it). Until a sealer is installed, sealing fails loudly: personal data never leaves
the gateway unsealed."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from cluster.config import ClusterConfig
from pii.errors import PiiError
from pii.keystore import KeyStore
from pii.sealing import Sealer

_lock = threading.Lock()
_sealer: Sealer | None = None


class SealerNotInstalled(PiiError):
    """``seal_details`` was called before ``install_sealer``."""


def install_sealer(config: ClusterConfig) -> Sealer:
    """Open the data-key store of ``config`` and make it this process's sealer (a second
    call replaces the first, closing its store)."""
    global _sealer
    sealer = Sealer(KeyStore.open(config))
    with _lock:
        old, _sealer = _sealer, sealer
    if old is not None:
        old.keys.close()
    return sealer


def uninstall_sealer() -> None:
    """Close this process's sealer (at shutdown)."""
    global _sealer
    with _lock:
        old, _sealer = _sealer, None
    if old is not None:
        old.keys.close()


def sealer_context(config: ClusterConfig) -> Callable[[Any], AsyncIterator[None]]:
    """An aiohttp cleanup context: ``app.cleanup_ctx.append(sealer_context(config))``
    installs the sealer when the application starts and closes it when it stops."""

    async def context(app: Any) -> AsyncIterator[None]:
        install_sealer(config)
        try:
            yield
        finally:
            uninstall_sealer()

    return context


def seal_details(user_id: str, details: Mapping[str, object]) -> str:
    """``details`` sealed for ``user_id`` by this process's sealer."""
    sealer = _sealer
    if sealer is None:
        raise SealerNotInstalled(
            "personal data cannot be sealed: no sealer in this process "
            "(call pii.gateway.install_sealer(config) at start)"
        )
    return sealer.seal(user_id, details)

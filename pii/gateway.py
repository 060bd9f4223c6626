"""The gateway's sealing, one per process: ``install_sealer(config)`` at start, then
``seal_details_async(user_id, details)`` for each checkout on the event loop
(``gateway.pii.seal_details_async`` calls it), or ``seal_details`` off it. Until a
sealer is installed, sealing fails loudly: personal data never leaves the gateway
unsealed.

The async path never waits for the store on the loop: a cached data key seals inline
(AES-GCM of a small document: microseconds); a shopper's first key is fetched or made
by the sealer's ``KeyLoader``, on its own thread, group-committed with the other new
shoppers of the moment (``pii.keyloader``)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from cluster.config import ClusterConfig
from pii.errors import PiiError
from pii.keyloader import KeyLoader
from pii.keystore import KeyStore
from pii.sealing import Sealer, seal_with

_lock = threading.Lock()
_sealer: Sealer | None = None
_loader: KeyLoader | None = None  # the installed sealer's, for the event loop


class SealerNotInstalled(PiiError):
    """``seal_details`` was called before ``install_sealer``."""


def install_sealer(config: ClusterConfig) -> Sealer:
    """Open the data-key store of ``config`` and make it this process's sealer (a second
    call replaces the first, closing its store)."""
    global _sealer, _loader
    sealer = Sealer(KeyStore.open(config))
    loader = KeyLoader(sealer)
    with _lock:
        old, _sealer, _loader = _loader, sealer, loader
    if old is not None:
        old.close()
    return sealer


def _take(only: Sealer | None = None) -> KeyLoader | None:
    """Uninstall the sealer (``only`` that one, if given) and hand back its loader."""
    global _sealer, _loader
    with _lock:
        if only is not None and _sealer is not only:
            return None
        old, _sealer, _loader = _loader, None, None
    return old


def uninstall_sealer() -> None:
    """Close this process's sealer (its store closes after the key group in progress)."""
    old = _take()
    if old is not None:
        old.close()


def sealer_context(config: ClusterConfig) -> Callable[[Any], AsyncIterator[None]]:
    """An aiohttp cleanup context: ``app.cleanup_ctx.append(sealer_context(config))``
    installs the sealer when the application starts and closes it when it stops."""

    async def context(app: Any) -> AsyncIterator[None]:
        sealer = install_sealer(config)
        try:
            yield
        finally:
            # Only its own: a sealer installed since then (another app) stays.
            old = _take(only=sealer)
            if old is not None:
                await old.aclose()

    return context


def _not_installed() -> SealerNotInstalled:
    return SealerNotInstalled(
        "personal data cannot be sealed: no sealer in this process "
        "(call pii.gateway.install_sealer(config) at start)"
    )


def seal_details(user_id: str, details: Mapping[str, object]) -> str:
    """``details`` sealed for ``user_id`` by this process's sealer. It may wait for the
    store: not for the event loop (``seal_details_async``)."""
    sealer = _sealer
    if sealer is None:
        raise _not_installed()
    return sealer.seal(user_id, details)


def prefetch_key(user_id: str) -> bool:
    """Start making or fetching the shopper's data key in the background (their hold was
    just placed: a checkout is likely to follow); True if a load was queued. Nothing
    happens without a sealer, or when the key is cached. On the event loop only."""
    loader = _loader
    return loader is not None and loader.prefetch(user_id)


async def seal_details_async(user_id: str, details: Mapping[str, object]) -> str:
    """``details`` sealed for ``user_id``; the event loop never waits for the store."""
    loader = _loader
    if loader is None:
        raise _not_installed()
    return seal_with(await loader.key(user_id), details)

"""What the CLI runs for ``flashsale keys rotate`` and ``flashsale gdpr export|erase``:
each opens the order store of the config, does one thing, and returns a JSON-able dict
for the CLI to print."""

from __future__ import annotations

from typing import Any

from cluster.config import ClusterConfig
from pii.gdpr import erase_user, export_user
from pii.keystore import KeyStore


def rotate_keys(config: ClusterConfig) -> dict[str, Any]:
    """Re-wrap every data key under ``pii.active_key``. Afterwards the other master keys
    can leave the config (and with them any copy of a wrapped key made before)."""
    keys = KeyStore.open(config)
    try:
        rotation = keys.rotate()
        return {
            "active_key": rotation.active_key,
            "rewrapped": rotation.rewrapped,
            "data_keys": rotation.total,
            "by_master_key": keys.counts_by_master(),
        }
    finally:
        keys.close()


def gdpr_export(config: ClusterConfig, user_id: str) -> dict[str, Any]:
    """The shopper's data as JSON (``pii.gdpr.export_user``)."""
    keys = KeyStore.open(config)
    try:
        return export_user(keys.db, keys, user_id)
    finally:
        keys.close()


def gdpr_erase(config: ClusterConfig, user_id: str) -> dict[str, Any]:
    """Destroy the shopper's data key: their personal data is unreadable everywhere."""
    keys = KeyStore.open(config)
    try:
        return erase_user(keys, user_id)
    finally:
        keys.close()

"""The master keys of [pii], checked for use: the development key is refused in
production mode, and a data key wrapped by a key the config no longer lists is named."""

from __future__ import annotations

from cluster.config import ClusterConfig, MasterKey, PiiConfig
from pii.aead import DataKey, unwrap, wrap
from pii.errors import MasterKeyMissing, PiiConfigError


class Keyring:
    """Wraps new data keys under the active master key; unwraps under any listed one."""

    def __init__(self, pii: PiiConfig, *, production: bool) -> None:
        if production:
            for key in pii.master_keys:
                if key.is_development_default:
                    raise PiiConfigError(
                        f"pii.master_keys.{key.key_id} is the public development key, "
                        "refused in production mode (set FLASHSALE_PII__MASTER_KEYS)"
                    )
        self._keys = {key.key_id: key for key in pii.master_keys}
        self.active: MasterKey = pii.active

    @classmethod
    def from_config(cls, config: ClusterConfig) -> Keyring:
        return cls(config.pii, production=config.mode == "production")

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def wrap(self, key: DataKey) -> tuple[str, bytes]:
        """(master key id, wrapped secret) of ``key`` under the active master key."""
        return self.active.key_id, wrap(self.active, key)

    def unwrap(self, master_key_id: str, user_id: str, key_id: str, wrapped: bytes) -> DataKey:
        master = self._keys.get(master_key_id)
        if master is None:
            raise MasterKeyMissing(
                f"data key {key_id} of {user_id!r} is wrapped by master key "
                f"{master_key_id!r}, which pii.master_keys does not list (have "
                f"{sorted(self._keys)}); restore it, or it cannot be opened"
            )
        return unwrap(master, user_id, key_id, wrapped)

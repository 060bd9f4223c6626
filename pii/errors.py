"""Why personal data could not be sealed or opened: one exception family, clear messages."""

from __future__ import annotations


class PiiError(Exception):
    """Base class of every personal-data failure."""


class MalformedSealed(PiiError, ValueError):
    """The text is not a sealed value of a format this code knows."""


class KeyErased(PiiError):
    """The shopper's data key was destroyed (GDPR erasure): the data is gone for good."""

    def __init__(self, user_id: str, key_id: str, erased_at_ms: int | None) -> None:
        when = "" if erased_at_ms is None else f" at {erased_at_ms} ms"
        super().__init__(
            f"personal data of {user_id!r} is erased: data key {key_id} was destroyed{when}"
        )
        self.user_id = user_id
        self.key_id = key_id
        self.erased_at_ms = erased_at_ms


class TamperedError(PiiError):
    """Authentication failed: the sealed value (or the wrapped key) was altered, or it
    belongs to another shopper or key."""


class MasterKeyMissing(PiiError):
    """A data key is wrapped by a master key the config no longer lists."""


class PiiConfigError(PiiError):
    """The [pii] config cannot be used here (for example the development key in
    production mode)."""


class KeyNotFound(PiiError):
    """No data key with this id is stored for the shopper, and no erasure of it is
    recorded: the value comes from another store or its key id was altered."""

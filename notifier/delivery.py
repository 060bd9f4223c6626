"""How a send can end, for every provider: delivered (with the provider's id for it), or
failed for now (try again later) or for good (never try again)."""

from __future__ import annotations

MAX_ERROR_CHARS = 300  # of a provider's answer, kept in the outbox row and the logs


class SendFailed(Exception):
    """A provider did not take a message. ``permanent``: trying again cannot help (an
    address refused, credentials rejected); otherwise the provider may take it later."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message[:MAX_ERROR_CHARS])
        self.permanent = permanent

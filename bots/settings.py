"""The settings operators change live (``PUT /internal/bots/settings``): their ranges,
their validation and how they are applied to a policy. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bots.policy import BotPolicy

# name -> (type, lowest, highest). The ranges are the contract with the console: wide
# enough for any real sale, narrow enough that a typo cannot make the defences useless
# (difficulty 1) or lock every shopper out (difficulty in the billions).
SETTINGS: dict[str, tuple[type, float, float]] = {
    "challenge_difficulty": (int, 1_000, 10_000_000),
    "admission_rate": (float, 0.1, 100_000),
    "block_score": (int, 1, 1_000),
}


class InvalidSetting(ValueError):
    """A setting is unknown, of the wrong type or out of range (``field`` says which)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field


def parse_settings(body: Any) -> dict[str, int | float]:
    """The validated subset of settings in a request body."""
    if not isinstance(body, Mapping):
        raise InvalidSetting("", "expected a JSON object of settings")
    changes: dict[str, int | float] = {}
    for name, value in body.items():
        if name not in SETTINGS:
            raise InvalidSetting(name, f"unknown setting {name!r}: expected {list(SETTINGS)}")
        kind, low, high = SETTINGS[name]
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or (kind is int and not isinstance(value, int)):
            expected = "an integer" if kind is int else "a number"
            raise InvalidSetting(name, f"{name}: expected {expected}")
        if not low <= value <= high:
            raise InvalidSetting(name, f"{name}={value}: expected {low:g}..{high:g}")
        changes[name] = kind(value)
    return changes


def apply_settings(policy: BotPolicy, changes: Mapping[str, int | float]) -> None:
    """Set ``changes`` (already validated) on ``policy``."""
    for name, value in changes.items():
        setattr(policy, name, value)


def current_settings(policy: BotPolicy) -> dict[str, int | float]:
    """The settings as the internal API shows them."""
    return {
        "challenge_difficulty": policy.challenge_difficulty,
        "admission_rate": policy.admission_rate,
        "block_score": policy.block_score,
    }

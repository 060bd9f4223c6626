"""The live settings of a gateway's bot defences, which operators change while selling.

Built from ``[bots]`` of cluster.toml at start; the console changes difficulty, the
admission rate, the block score and the block/allow lists through the gateway's internal
API (``/internal/bots``) without a restart. Every defence reads it on each request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.config import BotsConfig

LISTS = ("block_ips", "allow_ips", "block_shoppers", "allow_shoppers")


@dataclass(slots=True)
class BotPolicy:
    """What the defences enforce right now (mutable: the console changes it live)."""

    config: BotsConfig
    challenge_difficulty: int
    admission_rate: float
    block_score: int
    lists: dict[str, dict[str, None]] = field(default_factory=lambda: {n: {} for n in LISTS})

    @classmethod
    def from_config(cls, config: BotsConfig) -> BotPolicy:
        """The starting policy: the numbers of ``[bots]``, empty lists."""
        return cls(
            config=config,
            challenge_difficulty=config.challenge_difficulty,
            admission_rate=config.admission_rate,
            block_score=config.block_score,
        )

    def active(self, defence: str) -> bool:
        """True when ``defence`` is switched on (and ``[bots]`` as a whole is)."""
        return self.config.active(defence)

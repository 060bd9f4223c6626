"""Shoppers and bots side by side under locust, with every bot defence on (make load-bots,
briefly): the bots that skip the waiting room or the proof of work, or replay a spent
solution, get no unit while shoppers buy, and no shopper is turned away by a defence.

The account farm (a new account per hold from one address, each queued for its own
admission and doing the proof of work at machine speed) is in the sale too. It is not
held to zero: it does what a person's browser does, and the shipped defences bound it
instead. Its first ``accounts_per_ip`` accounts look like a household behind one address;
past that its address scores ``many-accounts`` plus ``fast-write`` and is blocked, ticket
requests included. So it gets at most ``accounts_per_ip`` units (per-user limit 1) per
address and window; the measured share is in docs/BENCHMARKS.md ("Shoppers and bots").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import BotsConfig
from loadtests.run_bots import BOT_KINDS, REFUSALS, Units, parser, run_bots

pytestmark = pytest.mark.cluster


def test_bots_get_no_unit_and_the_farm_is_bounded_while_shoppers_buy(tmp_path: Path) -> None:
    args = parser().parse_args([
        "--users", "21", "--bots", "2,1,1,1", "--spawn-rate", "21", "--seconds", "20",
        "--stock", "10", "--open-after", "5", "--nodes", "1", "--out", str(tmp_path),
    ])  # fmt: skip
    report, run = run_bots(args)

    assert report.problems == []  # the sale is exact: nothing oversold, charges = units
    shopper = run.units.get("shopper", Units())
    assert shopper.sold + shopper.reserved > 0, run.units
    for kind in BOT_KINDS:
        if kind == "bot-farm":
            continue
        got = run.units.get(kind, Units())
        assert (got.held, got.reserved, got.sold) == (0, 0, 0), (kind, got)
    # The farm: at most one unit per account it got past its address's allowance.
    farm = run.units.get("bot-farm", Units())
    assert farm.held <= BotsConfig().accounts_per_ip, farm
    assert run.answers["bot-farm"]["403 blocked"] > 0, run.answers["bot-farm"]
    # Every bot kind was in the sale and was turned away by a defence...
    assert sum(run.holds["bot-swarm"].values()) > 0
    assert run.holds["bot-swarm"]["403 admission-required"] + run.holds["bot-swarm"][
        "429 rate-limited"
    ] == sum(run.holds["bot-swarm"].values())
    assert run.holds["bot-script"]["403 admission-required"] > 0
    assert run.holds["bot-replay"]["403 challenge-replayed"] > 0
    assert sum(n for a, n in run.holds["bot-replay"].items() if a.startswith("2")) == 0
    # ...and the gateway counted those refusals.
    assert run.decisions.get(("queued", "admission-missing"), 0) > 0
    assert run.decisions.get(("challenged", "challenge-replayed"), 0) > 0
    assert run.decisions.get(("blocked", "score"), 0) > 0
    # No shopper was refused by a defence, and no request failed.
    assert not any(run.answers["shopper"][a] for a in REFUSALS), run.answers["shopper"]
    assert [e.name for e in report.endpoints if e.failures] == [], report.failures

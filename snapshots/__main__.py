"""``python -m snapshots --config PATH``: run the order-snapshot writer."""

from __future__ import annotations

import argparse
import sys

from cluster.config import ConfigError, load_config
from snapshots.server import main


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snapshots", description=__doc__)
    parser.add_argument("--config", default="cluster.toml", help="path of cluster.toml")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"python -m snapshots: {exc}", file=sys.stderr)
        return 2
    return main(config)


if __name__ == "__main__":
    sys.exit(run())

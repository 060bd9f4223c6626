"""``python -m notifier --config PATH``: run the notifier (``flashsale notifier`` does the
same)."""

from __future__ import annotations

import argparse
import sys

from cluster.config import ConfigError, load_config
from notifier.server import main


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notifier", description=__doc__)
    parser.add_argument("--config", default="cluster.toml", help="path of cluster.toml")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"python -m notifier: {exc}", file=sys.stderr)
        return 2
    return main(config)


if __name__ == "__main__":
    sys.exit(run())

"""``python -m node --config PATH NODE_ID``: run one Raft node of a cluster."""

from __future__ import annotations

import argparse
import sys

from cluster.config import ConfigError, load_config
from node.server import main


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node", description=__doc__)
    parser.add_argument("--config", default="cluster.toml", help="path of cluster.toml")
    parser.add_argument("node_id", help="id of this node in the config's [[nodes]]")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        config.node(args.node_id)
    except ConfigError as exc:
        print(f"python -m node: {exc}", file=sys.stderr)
        return 2
    return main(config, args.node_id)


if __name__ == "__main__":
    sys.exit(run())

"""``python -m gateway --config PATH GATEWAY_ID``: run one gateway process."""

from __future__ import annotations

import argparse
import sys

from cluster.config import ConfigError, load_config
from gateway.server import main as serve
from gateway.tls import server_context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--config", default="cluster.toml", help="cluster config file")
    parser.add_argument("gateway_id", help="id of a [[gateways]] entry of the config")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        server_context(config.gateway_settings, config.gateway(args.gateway_id).listen)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve(config, args.gateway_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m admin --config cluster.toml [serve | create-operator NAME ...]``.

The same two entry points ``flashsale admin`` uses, for running the console alone (tests
start it this way). ``create-operator`` reads the password from ``--password-stdin`` (one
line) or asks for it on the terminal.
"""

from __future__ import annotations

import argparse
import sys

from admin.operators import KNOWN_RIGHTS, RIGHT_OPERATOR, create_operator_cli
from admin.server import main as serve_main
from cluster.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m admin", description=__doc__)
    parser.add_argument("--config", default="cluster.toml", help="path of cluster.toml")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the console (the default)")
    create = sub.add_parser("create-operator", help="create a console account")
    create.add_argument("username")
    create.add_argument(
        "--rights",
        default=RIGHT_OPERATOR,
        help=f"comma-separated, some of {','.join(KNOWN_RIGHTS)} (empty: look only)",
    )
    create.add_argument("--password-stdin", action="store_true", help="read the password line")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config: {exc}", file=sys.stderr)
        return 2
    if args.command == "create-operator":
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
        return create_operator_cli(config, args.username, password, args.rights.split(","))
    return serve_main(config)


if __name__ == "__main__":
    sys.exit(main())

"""``flashsale``: run a cluster and operate it from the command line.

Every subcommand takes ``--config PATH`` (default ``./cluster.toml``). Errors are one
line on stderr: exit 2 for bad arguments or configuration, 1 when the cluster refused or
could not do what was asked (``status``: when there is no leader).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import uvloop

from cli import products, status
from cli.failure import EXIT_USAGE, Failure
from cli.money import parse_currency, parse_price
from cli.up import DEMO_PER_USER_LIMIT, DEMO_PRICE, DEMO_PRODUCT_ID, DEMO_STOCK, run_up
from cli.when import parse_when_ms
from cluster.client import ClusterClient, leader_id
from cluster.config import DEV_SECRET, ClusterConfig, ConfigError, load_config
from cluster.errors import ClusterError
from cluster.supervisor import die_with_parent
from ledger.limits import MAX_ID_LEN, MAX_NAME_LEN, MAX_STOCK, MAX_TTL_MS
from ledger.validation import id_problem

DEFAULT_CONFIG = "cluster.toml"
MAX_TOKEN_TTL_S = 30 * 24 * 3600  # a shopper token lives at most 30 days
MAX_HOLD_S = MAX_TTL_MS // 1000

T = TypeVar("T")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# -- argument types: ValueError -> "argument --x: invalid ... value" ----------------------


def bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {lo}..{hi}")
        return value

    return parse


def checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    def run(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return run


def identifier(text: str) -> str:
    if not 0 < len(text) <= MAX_ID_LEN:
        raise ValueError(f"{text!r}: expected 1..{MAX_ID_LEN} characters")
    return text


def product_name(text: str) -> str:
    if not 0 < len(text.strip()) <= MAX_NAME_LEN:
        raise ValueError(f"{text!r}: expected 1..{MAX_NAME_LEN} characters")
    return text.strip()


def when_ms(text: str) -> int:
    return parse_when_ms(text, time.time_ns() // 1_000_000)


# -- the parser --------------------------------------------------------------------------


def build_parser() -> Parser:
    """The whole ``flashsale`` command line."""
    parser = Parser(prog="flashsale", description="A Raft-replicated flash-sale platform.")
    common = Parser(add_help=False)
    common.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="PATH",
        help=f"cluster config file (default ./{DEFAULT_CONFIG})",
    )
    # For a subcommand of a subcommand: --config may come before or after the action, and
    # the action's parser must not reset a value given before it to the default.
    late_common = Parser(add_help=False)
    late_common.add_argument(
        "--config", default=argparse.SUPPRESS, metavar="PATH", help="cluster config file"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )

    up = sub.add_parser("up", parents=[common], help="run every node, gateway and the console")
    up.add_argument(
        "--demo",
        action="store_true",
        help=f"create the demo product {DEMO_PRODUCT_ID!r} ({DEMO_STOCK} units at "
        f"{DEMO_PRICE} USD, {DEMO_PER_USER_LIMIT} per shopper)",
    )
    up.add_argument(
        "--nodes-only", action="store_true", help="run only the Raft nodes (no gateway, no console)"
    )
    up.set_defaults(handler=cmd_up)

    node = sub.add_parser("node", parents=[common], help="run one Raft node")
    node.add_argument("id", help="node id from [[nodes]]")
    node.set_defaults(handler=cmd_node)

    gateway = sub.add_parser("gateway", parents=[common], help="run one public gateway")
    gateway.add_argument("id", help="gateway id from [[gateways]]")
    gateway.set_defaults(handler=cmd_gateway)

    sandbox = sub.add_parser(
        "payments-sandbox",
        parents=[common],
        help="run the sandbox payment service ([payments].sandbox_listen)",
    )
    sandbox.set_defaults(handler=cmd_payments_sandbox)

    admin = sub.add_parser(
        "admin", parents=[common], help="run the admin console, or create a console account"
    )
    admin.set_defaults(handler=cmd_admin)
    asub = admin.add_subparsers(dest="admin_command", metavar="ACTION", parser_class=Parser)
    serve = asub.add_parser("serve", parents=[late_common], help="run the console (the default)")
    serve.set_defaults(handler=cmd_admin)
    operator = asub.add_parser(
        "create-operator", parents=[late_common], help="create a console sign-in account"
    )
    operator.add_argument("username")
    operator.add_argument(
        "--rights",
        default="operator",
        help="comma-separated, some of operator,pii (empty: look only; default operator)",
    )
    operator.add_argument(
        "--password-stdin", action="store_true", help="read the password from one stdin line"
    )
    operator.set_defaults(handler=cmd_admin_create_operator)

    st = sub.add_parser("status", parents=[common], help="every node's role, term and health")
    st.add_argument("--json", action="store_true", help="print /v1/status of each node")
    st.set_defaults(handler=cmd_status)

    cluster = sub.add_parser("cluster", help="add or remove a Raft member while selling")
    clsub = cluster.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=Parser
    )
    add_node = clsub.add_parser(
        "add-node",
        parents=[common],
        help="make a node of cluster.toml a member (then start it: flashsale node ID)",
    )
    add_node.add_argument("id", type=checked(identifier), help="node id from [[nodes]]")
    add_node.set_defaults(handler=cmd_cluster_change, change="add")
    remove_node = clsub.add_parser(
        "remove-node",
        parents=[common],
        help="stop counting a member (a dead one, or one to retire; not the leader)",
    )
    remove_node.add_argument("id", type=checked(identifier), help="node id from [[nodes]]")
    remove_node.set_defaults(handler=cmd_cluster_change, change="remove")

    product = sub.add_parser("product", help="create, change and list products")
    psub = product.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=Parser
    )

    add = psub.add_parser("add", parents=[common], help="create a product")
    add.add_argument("--id", required=True, type=checked(identifier), dest="product_id")
    add.add_argument("--name", required=True, type=checked(product_name))
    add.add_argument("--price", required=True, type=checked(parse_price), help="e.g. 19.99")
    add.add_argument("--stock", required=True, type=bounded_int(0, MAX_STOCK))
    add.add_argument("--currency", default="USD", type=checked(parse_currency))
    add_terms(add)
    add.add_argument(
        "--key",
        type=checked(identifier),
        help="idempotency key (default: derived from the arguments)",
    )
    add.set_defaults(handler=cmd_product_add)

    update = psub.add_parser("update", parents=[common], help="change a product's terms")
    update.add_argument("--id", required=True, type=checked(identifier), dest="product_id")
    update.add_argument("--name", type=checked(product_name))
    update.add_argument("--price", type=checked(parse_price))
    add_terms(update)
    update.add_argument("--always-open", action="store_true", help="clear the opening time")
    update.add_argument("--never-closes", action="store_true", help="clear the closing time")
    update.add_argument("--no-limit", action="store_true", help="clear the per-user limit")
    update.add_argument("--key", type=checked(identifier), help="idempotency key")
    update.set_defaults(handler=cmd_product_update)

    restock = psub.add_parser(
        "restock", parents=[common], help="add units (a negative quantity withdraws available ones)"
    )
    restock.add_argument("--id", required=True, type=checked(identifier), dest="product_id")
    restock.add_argument("--quantity", required=True, type=bounded_int(-MAX_STOCK, MAX_STOCK))
    restock.add_argument("--key", type=checked(identifier), help="idempotency key")
    restock.set_defaults(handler=cmd_product_restock)

    plist = psub.add_parser("list", parents=[common], help="every product with its stock")
    plist.add_argument("--json", action="store_true")
    plist.set_defaults(handler=cmd_product_list)

    show = psub.add_parser("show", parents=[common], help="one product")
    show.add_argument("product_id", type=checked(identifier))
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_product_show)

    token = sub.add_parser("token", parents=[common], help="issue a shopper token")
    token.add_argument("user_id", type=checked(identifier))
    token.add_argument(
        "--ttl-seconds",
        type=bounded_int(1, MAX_TOKEN_TTL_S),
        metavar="S",
        help="lifetime (default: gateway.token_ttl_s of the config)",
    )
    token.set_defaults(handler=cmd_token)

    config = sub.add_parser("config", help="inspect the configuration")
    csub = config.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=Parser
    )
    check = csub.add_parser(
        "check", parents=[common], help="validate the config and print the effective values"
    )
    check.set_defaults(handler=cmd_config_check)

    chaos = sub.add_parser("chaos", help="faults during a live sale, then a verdict")
    chsub = chaos.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=Parser
    )
    chaos_run = chsub.add_parser(
        "run",
        parents=[common],
        help="start a cluster, sell under a fault scenario, check every invariant",
    )
    chaos_run.add_argument(
        "--scenario",
        default="mixed",
        metavar="NAME",
        help="leader-kill, follower-kill, pause, partition-leader, partition-majority, "
        "full-restart, delay, slow-disk, clock-skew or mixed (default)",
    )
    chaos_run.add_argument(
        "--duration",
        type=bounded_int(5, 24 * 3600),
        default=180,
        metavar="S",
        help="seconds of selling under faults (default 180)",
    )
    chaos_run.add_argument(
        "--seed",
        type=bounded_int(0, 2**63 - 1),
        metavar="N",
        help="repeat a run: same faults, same shopper choices (default: random, printed)",
    )
    chaos_run.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default var/chaos/NAME-SEED)"
    )
    chaos_run.add_argument(
        "--target",
        action="store_true",
        help="sell against the running cluster of --config instead of starting one: "
        "under `flashsale up` (pid files in <data_dir>/run) the scenario's kills and "
        "pauses only, otherwise NO faults (partitions, delays, slow disks and clock skews "
        "need the run's own cluster); no snapshot-store check; creates two products of "
        "its own",
    )
    chaos_run.set_defaults(handler=cmd_chaos_run)
    add_data_commands(sub, common)
    add_bots_commands(sub, common)
    return parser


def add_terms(p: argparse.ArgumentParser) -> None:
    p.add_argument("--per-user-limit", type=bounded_int(1, MAX_STOCK), metavar="N")
    p.add_argument(
        "--hold-seconds",
        type=bounded_int(1, MAX_HOLD_S),
        metavar="S",
        help="how long an add-to-cart holds units (default 300)",
    )
    p.add_argument(
        "--opens",
        type=checked(when_ms),
        metavar="WHEN",
        help="ISO 8601 time with offset (2025-11-28T09:00:00Z) or 'now'",
    )
    p.add_argument(
        "--closes", type=checked(when_ms), metavar="WHEN", help="ISO 8601 time with offset or 'now'"
    )


# -- commands ----------------------------------------------------------------------------


def load(args: argparse.Namespace) -> ClusterConfig:
    return load_config(args.config)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def cmd_up(args: argparse.Namespace) -> int:
    config = load(args)
    path = config.path or Path(args.config).resolve()
    return run_async(run_up(config, path, sys.stdout, demo=args.demo, nodes_only=args.nodes_only))


def run_server(module_name: str, *call_args: object) -> int:
    """Import ``module_name`` late (only this subcommand needs it) and run its main."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise Failure(f"{module_name} is not installed in this build") from None
        raise
    die_with_parent()
    outcome = module.main(*call_args)
    if inspect.iscoroutine(outcome):
        outcome = run_async(outcome)
    return outcome if isinstance(outcome, int) else 0


def cmd_node(args: argparse.Namespace) -> int:
    config = load(args)
    config.node(args.id)
    return run_server("node.server", config, args.id)


def cmd_gateway(args: argparse.Namespace) -> int:
    config = load(args)
    config.gateway(args.id)
    return run_server("gateway.server", config, args.id)


def cmd_payments_sandbox(args: argparse.Namespace) -> int:
    config = load(args)
    if config.payments.sandbox_listen is None:
        raise Failure("payments.sandbox_listen is not set in the config", EXIT_USAGE)
    return run_server("payments.sandbox", config)


def cmd_admin(args: argparse.Namespace) -> int:
    return run_server("admin.server", load(args))


def cmd_admin_create_operator(args: argparse.Namespace) -> int:
    config = load(args)
    try:
        operators = importlib.import_module("admin.operators")
    except ModuleNotFoundError:
        raise Failure("admin.operators is not installed in this build") from None
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    rights = [r for r in args.rights.split(",") if r]
    code: int = operators.create_operator_cli(config, args.username, password, rights)
    return code


def cmd_status(args: argparse.Namespace) -> int:
    config = load(args)

    async def fetch() -> dict[str, dict[str, Any] | None]:
        async with ClusterClient(config) as client:
            return await client.status_all()

    statuses = run_async(fetch())
    if args.json:
        print(json.dumps(statuses, indent=2, sort_keys=True))
    else:
        print(status.table(statuses))
    return 0 if leader_id(statuses) is not None else 1


def cmd_cluster_change(args: argparse.Namespace) -> int:
    config = load(args)
    node = config.node(args.id)
    answer = with_client(config, lambda c: c.change_membership(args.change, node))
    print(status.membership_change(args.change, node.id, answer))
    return 0


def with_client(
    config: ClusterConfig, work: Callable[[ClusterClient], Coroutine[Any, Any, T]]
) -> T:
    async def go() -> T:
        async with ClusterClient(config) as client:
            return await work(client)

    return run_async(go())


def cmd_product_add(args: argparse.Namespace) -> int:
    try:
        command = products.create_product_command(
            product_id=args.product_id,
            name=args.name,
            price=args.price,
            currency=args.currency,
            stock=args.stock,
            per_user_limit=args.per_user_limit,
            hold_s=args.hold_seconds,
            opens_at_ms=args.opens,
            closes_at_ms=args.closes,
            key=args.key,
        )
    except ValueError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    config = load(args)
    result = with_client(config, lambda c: products.submit_one(c, command))
    print(products.describe(result["product"]))
    return 0


def cmd_product_update(args: argparse.Namespace) -> int:
    config = load(args)
    conflicts = [
        ("--opens", args.opens, "--always-open", args.always_open),
        ("--closes", args.closes, "--never-closes", args.never_closes),
        ("--per-user-limit", args.per_user_limit, "--no-limit", args.no_limit),
    ]
    for a, a_value, b, b_value in conflicts:
        if a_value is not None and b_value:
            raise Failure(f"{a} and {b} contradict each other", EXIT_USAGE)

    async def work(client: ClusterClient) -> dict[str, Any]:
        price: Decimal | None = args.price
        currency = "USD"
        if price is not None:
            currency = await products.current_currency(client, args.product_id)
        try:
            command = products.update_product_command(
                product_id=args.product_id,
                currency=currency,
                name=args.name,
                price=price,
                per_user_limit=args.per_user_limit,
                hold_s=args.hold_seconds,
                opens_at_ms=args.opens,
                closes_at_ms=args.closes,
                always_open=args.always_open,
                never_closes=args.never_closes,
                no_limit=args.no_limit,
                key=args.key,
            )
        except ValueError as exc:
            raise Failure(str(exc), EXIT_USAGE) from None
        return await products.submit_one(client, command)

    result = with_client(config, work)
    print(products.describe(result["product"]))
    return 0


def cmd_product_restock(args: argparse.Namespace) -> int:
    try:
        command = products.restock_command(
            product_id=args.product_id, quantity=args.quantity, key=args.key
        )
    except ValueError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    config = load(args)
    result = with_client(config, lambda c: products.submit_one(c, command))
    available, total = result["available"], result["total_stock"]
    print(f"{result['product_id']}: {available} available, {total} in total")
    return 0


def cmd_product_list(args: argparse.Namespace) -> int:
    config = load(args)
    found = with_client(config, lambda c: c.get("/v1/products"))
    items: list[dict[str, Any]] = found.get("products", [])
    if args.json:
        print(json.dumps(found, indent=2, sort_keys=True))
    elif not items:
        print("no products yet (flashsale product add --help)")
    else:
        print(products.table(items))
    return 0


def cmd_product_show(args: argparse.Namespace) -> int:
    config = load(args)
    path = f"/v1/products/{quote(args.product_id, safe='')}"
    found = with_client(config, lambda c: c.get(path))
    if args.json:
        print(json.dumps(found, indent=2, sort_keys=True))
    else:
        print(products.describe(found["product"]))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    config = load(args)
    try:
        identity = importlib.import_module("gateway.identity")
    except ModuleNotFoundError:
        raise Failure("gateway.identity is not installed in this build") from None
    ttl_s = args.ttl_seconds or config.gateway_settings.token_ttl_s
    try:
        print(identity.issue_token(config.secret, args.user_id, ttl_s))
    except ValueError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    return 0


def effective_config(config: ClusterConfig) -> dict[str, Any]:
    """The config as data (paths as Path), the secret replaced by a description of it."""
    data = asdict(config)
    data["secret"] = (
        "<the development default>"
        if config.secret == DEV_SECRET
        else f"<set, {len(config.secret)} characters>"
    )
    data["pii"]["master_keys"] = [  # asdict keeps the key bytes: never print them
        {
            "key_id": key.key_id,
            "secret": "<the development default>" if key.is_development_default else "<set>",
        }
        for key in config.pii.master_keys
    ]
    return data


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load(args)
    print(json.dumps(effective_config(config), indent=2, default=str))
    print(f"config OK: {config.path}", file=sys.stderr)
    return 0


def cmd_chaos_run(args: argparse.Namespace) -> int:
    # Imported here: only this subcommand needs the chaos package.
    from chaos.run import run_chaos
    from chaos.scenarios import SCENARIOS

    if args.scenario not in SCENARIOS:
        raise Failure(
            f"unknown scenario {args.scenario!r}: one of {', '.join(SCENARIOS)}", EXIT_USAGE
        )
    if args.target:
        from chaos.nemesis import PROCESS_FAULTS

        if not SCENARIOS[args.scenario].mix.only(PROCESS_FAULTS).weights:
            raise Failure(
                f"--target injects only kills and pauses (the run owns no link, no disk and "
                f"no clock of the cluster): scenario {args.scenario!r} has none",
                EXIT_USAGE,
            )
        return run_chaos(
            args.scenario, args.duration, args.seed, args.out, target=Path(args.config)
        )
    return run_chaos(args.scenario, args.duration, args.seed, args.out)


# -- order data: the snapshot writer, personal-data keys, GDPR (docs/DATA.md) -----------


def shopper_id(text: str) -> str:
    problem = id_problem("user id", text)
    if problem is not None:
        raise ValueError(problem)
    return text


def add_data_commands(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``snapshots``, ``keys rotate`` and ``gdpr export|erase``."""
    snapshots = sub.add_parser(
        "snapshots",
        parents=[common],
        help="run the order-snapshot writer (the ledger's feed into [storage] url)",
    )
    snapshots.set_defaults(handler=cmd_snapshots)

    notifier = sub.add_parser(
        "notifier",
        parents=[common],
        help="run the notifier (email and SMS to shoppers, from the ledger's feed)",
    )
    notifier.set_defaults(handler=cmd_notifier)

    keys = sub.add_parser("keys", help="the master keys that wrap the shoppers' data keys")
    ksub = keys.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=Parser)
    rotate = ksub.add_parser(
        "rotate", parents=[common], help="re-wrap every data key under pii.active_key"
    )
    rotate.set_defaults(handler=cmd_keys_rotate)

    gdpr = sub.add_parser("gdpr", help="a shopper's personal data: export or erase")
    gsub = gdpr.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=Parser)
    export = gsub.add_parser(
        "export", parents=[common], help="print what the order store holds about a shopper (JSON)"
    )
    export.add_argument("user_id", type=checked(shopper_id))
    export.set_defaults(handler=cmd_gdpr_export)
    erase = gsub.add_parser(
        "erase",
        parents=[common],
        help="destroy a shopper's data key: their personal data is unreadable everywhere",
    )
    erase.add_argument("user_id", type=checked(shopper_id))
    erase.add_argument(
        "--yes", action="store_true", help="do not ask (required when stdin is not a terminal)"
    )
    erase.set_defaults(handler=cmd_gdpr_erase)


def one_line(text: str) -> str:
    return " ".join(text.split())


def on_order_store(work: Callable[[], T]) -> T:
    """Run ``work`` against the order store; its failures become one line (exit 2 for the
    configuration, 1 otherwise)."""
    from pii.errors import PiiConfigError, PiiError
    from snapshots.database import DatabaseError, StoreUrlError
    from snapshots.schema import SchemaError

    try:
        return work()
    except (PiiConfigError, StoreUrlError) as exc:
        raise Failure(f"config error: {one_line(str(exc))}", EXIT_USAGE) from None
    except PiiError as exc:
        raise Failure(one_line(str(exc))) from None
    except SchemaError as exc:
        raise Failure(f"order store: {one_line(str(exc))}") from None
    except DatabaseError as exc:
        raise Failure(f"order store: {type(exc).__name__}: {one_line(str(exc))}") from None


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def cmd_snapshots(args: argparse.Namespace) -> int:
    config = load(args)
    return on_order_store(lambda: run_server("snapshots.server", config))


def cmd_notifier(args: argparse.Namespace) -> int:
    config = load(args)
    return on_order_store(lambda: run_server("notifier.server", config))


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from pii.cli import rotate_keys

    config = load(args)
    result = on_order_store(lambda: rotate_keys(config))
    print_json(result)
    print(
        f"re-wrapped {result['rewrapped']} data keys under master key "
        f"{result['active_key']!r}; {result['data_keys']} stored",
        file=sys.stderr,
    )
    return 0


def cmd_gdpr_export(args: argparse.Namespace) -> int:
    from pii.cli import gdpr_export

    config = load(args)
    print_json(on_order_store(lambda: gdpr_export(config, args.user_id)))
    return 0


def confirm_erasure(user_id: str) -> None:
    """Ask on the terminal; without one, refuse (``--yes`` says it up front)."""
    if not sys.stdin.isatty():
        raise Failure(
            f"not erased: erasing {user_id!r} cannot be undone; confirm with --yes "
            "(stdin is not a terminal to ask on)",
            EXIT_USAGE,
        )
    print(
        f"Erase the personal data of {user_id!r}? Every copy of it becomes unreadable, "
        "for good. Type yes to erase: ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    if sys.stdin.readline().strip().lower() != "yes":
        raise Failure(f"not erased: {user_id!r} was not confirmed")


def cmd_gdpr_erase(args: argparse.Namespace) -> int:
    from pii.cli import gdpr_erase

    config = load(args)
    if not args.yes:
        confirm_erasure(args.user_id)
    result = on_order_store(lambda: gdpr_erase(config, args.user_id))
    print_json(result)
    destroyed = ", ".join(result["destroyed_key_ids"]) or "none: the shopper had no data key"
    print(f"erased {args.user_id!r}: data keys destroyed: {destroyed}", file=sys.stderr)
    return 0


# -- entry point -------------------------------------------------------------------------


# -- bot defences: every gateway's internal bots API (docs/BOTS.md) ----------------------


def add_bots_commands(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``bots status|set|block|allow|unblock``."""
    bots = sub.add_parser("bots", help="the gateways' bot defences: numbers, block/allow lists")
    bsub = bots.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=Parser)
    st = bsub.add_parser("status", parents=[common], help="what every gateway counts and enforces")
    st.set_defaults(handler=cmd_bots_status)
    bset = bsub.add_parser("set", parents=[common], help="change settings on every gateway")
    bset.add_argument("--difficulty", metavar="N", help="challenge difficulty, 1000..10000000")
    bset.add_argument("--admission-rate", metavar="R", help="shoppers admitted/s, 0.1..100000")
    bset.add_argument("--block-score", metavar="S", help="heuristic score that blocks, 1..1000")
    bset.set_defaults(handler=cmd_bots_set)
    for name, helptext, kind, op in (
        ("block", "block an IP, a network (CIDR) or a shopper on every gateway", "block", "add"),
        ("unblock", "remove an entry from the block lists", "block", "remove"),
        ("allow", "let an IP, network or shopper skip the defences", "allow", "add"),
    ):
        p = bsub.add_parser(name, parents=[common], help=helptext)
        p.add_argument("value", help="203.0.113.7, 10.0.0.0/8 or a shopper id")
        p.add_argument("--shopper", action="store_true", help="the value is a shopper id")
        if name == "allow":
            p.add_argument("--remove", action="store_true", help="take it off the allow list")
        p.set_defaults(handler=cmd_bots_list, kind=kind, op=op)


def cmd_bots_status(args: argparse.Namespace) -> int:
    from cli import bots

    text, all_answered = bots.status(load(args))
    print(text)
    return 0 if all_answered else 1


def _bots_outcome(text: str, everywhere: bool) -> int:
    print(text)
    if not everywhere:
        print(
            "flashsale: not every gateway took it; the console sends it again once they answer",
            file=sys.stderr,
        )
    return 0 if everywhere else 1


def cmd_bots_set(args: argparse.Namespace) -> int:
    from cli import bots

    values = bots.parse_settings(
        {
            "challenge_difficulty": args.difficulty,
            "admission_rate": args.admission_rate,
            "block_score": args.block_score,
        }
    )
    return _bots_outcome(*bots.set_settings(load(args), values))


def cmd_bots_list(args: argparse.Namespace) -> int:
    from cli import bots

    op = "remove" if getattr(args, "remove", False) else args.op
    list_, value = bots.list_entry(args.kind, args.value, args.shopper)
    return _bots_outcome(*bots.change_list(load(args), list_, op, value))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``flashsale`` command; the exit status."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"flashsale: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Failure as exc:
        print(f"flashsale: {exc}", file=sys.stderr)
        return exc.exit_code
    except ClusterError as exc:
        print(f"flashsale: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""`imageserve keys create|list|revoke`: API keys in the database.

They work on the same database as the server (`IMAGESERVE_DATABASE_URL`, else SQLite in the data dir),
so they can run while it serves: a new key works at once, a revoked one is refused at once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections import defaultdict
from typing import Any

from pipelines.errors import ImageServeError
from server.accounts.database import Database
from server.accounts.keys import KeyStore
from server.accounts.ledger import UsageLedger
from server.cli.common import add_config_option, print_table, with_database
from server.settings import Settings

MAX_LIMIT = 10**9  # far above any real quota, and well inside the database's integer column


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _limit(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


@with_database
def cmd_keys_create(args: argparse.Namespace, settings: Settings, database: Database) -> int:
    tier = args.tier.lower()
    if tier not in settings.tiers:
        print(f"error: unknown tier {tier!r}; configured tiers: {', '.join(settings.tiers)}", file=sys.stderr)
        return 2
    key, record = KeyStore(database).create(tier, args.name, args.images_per_minute, args.images_per_day)
    limits = UsageLedger(database, settings.tiers).limits_for(tier, record.images_per_minute, record.images_per_day)
    print(key)  # alone on stdout, so `KEY=$(imageserve keys create ...)` works
    print(f"created key '{record.name}' (tier {tier}: {_limit(limits.per_minute)} images/minute, "
          f"{_limit(limits.per_day)} images/day). This is the only time the key is shown; store it now.",
          file=sys.stderr)
    return 0


@with_database
def cmd_keys_list(args: argparse.Namespace, settings: Settings, database: Database) -> int:
    ledger = UsageLedger(database, settings.tiers)
    today = ledger.today()
    totals: dict[str, int] = defaultdict(int)
    todays: dict[str, int] = defaultdict(int)
    for row in ledger.report_all(dt.date(1970, 1, 1), today):
        totals[row["key_id"]] += row["images"]
    for row in ledger.report_all(today, today):
        todays[row["key_id"]] += row["images"]
    rows: list[list[Any]] = [["NAME", "TIER", "LIMITS/MIN", "LIMITS/DAY", "SOURCE", "STATUS", "CREATED",
                              "LAST USED", "IMAGES TODAY", "IMAGES TOTAL"]]
    for record in KeyStore(database).list():
        if record.source == "builtin" and not totals[record.key_id]:
            continue
        try:
            limits = ledger.limits_for(record.tier, record.images_per_minute, record.images_per_day)
            per_minute, per_day = _limit(limits.per_minute), _limit(limits.per_day)
        except ImageServeError:  # a tier no longer configured
            per_minute = per_day = "?"
        rows.append([record.name, record.tier, per_minute, per_day, record.source,
                     "active" if record.active else f"revoked {_when(record.revoked_at)}",
                     _when(record.created_at), _when(record.last_used_at), todays[record.key_id],
                     totals[record.key_id]])
    if len(rows) == 1:
        print("no keys yet: create one with `imageserve keys create --tier pro --name NAME`")
        return 0
    print_table(rows)
    return 0


@with_database
def cmd_keys_revoke(args: argparse.Namespace, settings: Settings, database: Database) -> int:
    record = KeyStore(database).revoke(args.name)
    print(f"revoked key '{record.name}'")
    return 0


def _limit_option(raw: str) -> int:
    """A per-key limit: a whole number from 0 (no limit) to MAX_LIMIT."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {raw!r}") from None
    if not 0 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 0 (no limit) to {MAX_LIMIT}, not {value}")
    return value


def add_keys_command(commands: Any) -> None:
    """Register `keys` (create, list, revoke) on the `imageserve` parser's subcommands."""
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)

    create = keys_commands.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--tier", required=True, help="free, pro, enterprise, or a tier from the config")
    create.add_argument("--name", default=None, help="a unique name (default: derived from the key)")
    create.add_argument("--images-per-minute", type=_limit_option, default=None,
                        help="this key's own limit instead of its tier's (0: no limit)")
    create.add_argument("--images-per-day", type=_limit_option, default=None,
                        help="this key's own limit instead of its tier's (0: no limit)")
    create.set_defaults(handler=cmd_keys_create)

    listing = keys_commands.add_parser("list", help="list keys with tier, limits and usage (never the key)")
    listing.set_defaults(handler=cmd_keys_list)

    revoke = keys_commands.add_parser("revoke", help="revoke a key by name; it is refused from then on")
    revoke.add_argument("name")
    revoke.set_defaults(handler=cmd_keys_revoke)

    add_config_option(keys, create, listing, revoke)

"""`imageserve usage`: images and cost per key, per model and per day, from the usage ledger.

It reads the same database as the server (`IMAGESERVE_DATABASE_URL`, else SQLite in the data dir), so it
can run while the server serves.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from server.accounts.database import Database
from server.accounts.ledger import UsageLedger
from server.api.usage import parse_range
from server.cli.common import add_config_option, print_table, with_database
from server.errors import InvalidRequest
from server.settings import Settings


@with_database
def cmd_usage(args: argparse.Namespace, settings: Settings, database: Database) -> int:
    ledger = UsageLedger(database, settings.tiers)
    params = {name: value for name in ("start", "end") if (value := getattr(args, name)) is not None}
    try:
        start, end = parse_range(params, ledger.today())
    except InvalidRequest as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(f"usage from {start.isoformat()} to {end.isoformat()} (UTC days, inclusive)")
    groupings = ("model", "day") if args.by == "both" else (args.by,)
    for index, by in enumerate(groupings):
        if index:
            print()
        print_table(usage_rows(ledger.report_all(start, end, by=by), by))
    return 0


def usage_rows(report: list[dict[str, Any]], by: str) -> list[list[Any]]:
    """One table: a row per (key, model) or (key, day), then the total."""
    rows: list[list[Any]] = [["KEY", "TIER", by.upper(), "REQUESTS", "IMAGES", "COST USD"]]
    total_images, total_cost, total_requests = 0, 0.0, 0
    for row in report:
        rows.append([row["name"], row["tier"], row[by], row["requests"], row["images"], f"{row['cost_usd']:.4f}"])
        total_images += row["images"]
        total_cost += row["cost_usd"]
        total_requests += row["requests"]
    rows.append(["TOTAL", "", "", total_requests, total_images, f"{total_cost:.4f}"])
    return rows


def add_usage_command(commands: Any) -> None:
    """Register `usage` on the `imageserve` parser's subcommands."""
    usage = commands.add_parser("usage", help="images and cost per key, per model and per day, over a date range")
    usage.add_argument("--start", default=None, help="first UTC day, YYYY-MM-DD (default: 29 days before end)")
    usage.add_argument("--end", default=None, help="last UTC day, YYYY-MM-DD (default: today)")
    usage.add_argument("--by", choices=("model", "day", "both"), default="both",
                       help="totals per key and model, per key and day, or both tables (default)")
    usage.set_defaults(handler=cmd_usage)
    add_config_option(usage)

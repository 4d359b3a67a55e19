"""`imageserve usage`: images and cost per key, per model and per day, from the usage ledger.

It reads the same database as the server (`IMAGESERVE_DATABASE_URL`, else SQLite in the data dir), so it
can run while the server serves, and counts rows folded into per-day totals by the retention setting.

`--format table` (the default) prints a table per grouping; `--format csv` and `--format json` export the
rows for other tools on stdout alone: one per key and model (`--by model`), key and day (`--by day`) or,
with `--by both`, key, model and day, each carrying the range it covers (`start`, `end`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from server.accounts.database import Database
from server.accounts.ledger import UsageLedger
from server.api.usage import parse_range
from server.cli.common import add_config_option, print_table, with_database
from server.errors import InvalidRequest
from server.settings import Settings

FORMATS = ("table", "csv", "json")
EXPORT_FIELDS = ("start", "end", "key_id", "name", "tier", "model", "day", "requests", "images", "cost_usd")


@with_database
def cmd_usage(args: argparse.Namespace, settings: Settings, database: Database) -> int:
    if args.format not in FORMATS:
        print(f"error: --format must be one of {', '.join(FORMATS)}, not {args.format!r}", file=sys.stderr)
        return 2
    ledger = UsageLedger(database, settings.tiers)
    params = {name: value for name in ("start", "end") if (value := getattr(args, name)) is not None}
    try:
        start, end = parse_range(params, ledger.today())
    except InvalidRequest as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if args.format != "table":
        rows = export_rows(ledger.report_all(start, end, by=args.by), start.isoformat(), end.isoformat())
        if args.format == "json":
            print(json.dumps(rows, indent=2))
        else:
            write_csv(rows, args.by)
        return 0
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


def export_rows(report: list[dict[str, Any]], start: str, end: str) -> list[dict[str, Any]]:
    """The report's dicts, each with the range it covers, in the export's field order."""
    dated = ({"start": start, "end": end, **row} for row in report)
    return [{name: row[name] for name in EXPORT_FIELDS if name in row} for row in dated]


def write_csv(rows: list[dict[str, Any]], by: str) -> None:
    """A header, then one line per row; the cost with six decimals (never in exponent form)."""
    grouping = ("model", "day") if by == "both" else (by,)
    fields = [name for name in EXPORT_FIELDS if name not in ("model", "day") or name in grouping]
    writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "cost_usd": f"{row['cost_usd']:.6f}"})


def add_usage_command(commands: Any) -> None:
    """Register `usage` on the `imageserve` parser's subcommands."""
    usage = commands.add_parser("usage", help="images and cost per key, per model and per day, over a date range")
    usage.add_argument("--start", default=None, help="first UTC day, YYYY-MM-DD (default: 29 days before end)")
    usage.add_argument("--end", default=None, help="last UTC day, YYYY-MM-DD (default: today)")
    usage.add_argument("--by", choices=("model", "day", "both"), default="both",
                       help="totals per key and model, per key and day, or both (default): two tables, or for "
                            "csv and json one row per key, model and day")
    usage.add_argument("--format", default="table", metavar="{table,csv,json}",
                       help="a table per grouping (default), or CSV with a header, or a JSON array, on stdout")
    usage.set_defaults(handler=cmd_usage)
    add_config_option(usage)

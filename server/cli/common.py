"""What every `imageserve` command shares: its settings from the command line, the table printer, and the
database opened for one admin command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from server.accounts.database import Database
from server.accounts.setup import database_url
from server.settings import Settings, load_settings


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings: `--config FILE` (if given), the environment, then `--host`/`--port` where a command has them."""
    overrides = {}
    for name in ("host", "port"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if args.config is not None and Path(args.config).is_dir():
        raise ValueError(f"--config {args.config} is a directory; give the TOML settings file")
    return load_settings(args.config, **overrides)


def print_table(rows: Sequence[Sequence[Any]]) -> None:
    """Rows of cells (the first: the headings) in columns two spaces apart; the last column is not padded."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]) - 1)]
    for row in cells:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]))


DatabaseCommand = Callable[[argparse.Namespace, Settings, Database], int]


def with_database(handler: DatabaseCommand) -> Callable[[argparse.Namespace], int]:
    """Open the database for one command; report its errors in one line, without a traceback."""

    def run(args: argparse.Namespace) -> int:
        settings = settings_from_args(args)
        database = Database(database_url(settings))
        try:
            return handler(args, settings, database)
        except SQLAlchemyError as exc:
            print(f"error: {database.describe_error(exc)}", file=sys.stderr)
            return 1
        finally:
            database.dispose()

    return run


def add_config_option(*parsers: argparse.ArgumentParser, help_text: str | None = "TOML settings file") -> None:
    """`--config` after the command too (`imageserve keys list --config FILE`); absent, the top-level one holds."""
    for parser in parsers:
        parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=help_text)

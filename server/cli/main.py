"""The `imageserve` command: the parser over every command group, and `main`, which runs one.

Each group lives in its own module and registers itself: `serve`, `models` and `pull`, `doctor`, `bench`,
`keys`, `usage`, `generate`. Errors a user can fix (a missing file, a bad setting) end the command with one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from server.cli.bench import add_bench_command
from server.cli.doctor import add_doctor_command
from server.cli.generate import add_generate_command
from server.cli.keys import add_keys_command
from server.cli.models import add_model_commands
from server.cli.serve import add_serve_command
from server.cli.usage import add_usage_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imageserve", description="Self-hosted OpenAI-compatible image server.")
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    commands = parser.add_subparsers(dest="command", required=True)
    add_serve_command(commands)
    add_model_commands(commands)
    add_doctor_command(commands)
    add_bench_command(commands)
    add_keys_command(commands)
    add_usage_command(commands)
    add_generate_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except OSError as exc:
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def os_error_message(exc: OSError) -> str:
    """One line naming the path and what is wrong with it (a missing, unreadable or misplaced file)."""
    path = exc.filename
    if path is None:
        return str(exc)
    if isinstance(exc, FileExistsError):  # from mkdir: a file stands where a folder is needed
        return f"{path} exists and is not a directory"
    if isinstance(exc, NotADirectoryError):
        return f"{path}: part of this path is a file, not a directory"
    if isinstance(exc, IsADirectoryError):
        return f"{path} is a directory, not a file"
    return f"{exc.strerror or type(exc).__name__}: {path}"


if __name__ == "__main__":
    sys.exit(main())

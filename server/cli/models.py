"""`imageserve models` (the models with provider, readiness and price) and `imageserve pull` (their weights).

Neither starts the app: `models` builds each backend only to ask it whether it is ready; `pull` needs the
registry alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from server.cli.common import add_config_option, print_table, settings_from_args
from server.registry import build_registry


def cmd_models(args: argparse.Namespace) -> int:
    from server.backends.factory import build_backend

    settings = settings_from_args(args)
    rows = [("MODEL", "PROVIDER", "READY", "PRICE/IMG", "RUNS ON", "STATUS")]
    warnings: list[str] = []
    for spec in build_registry(settings):
        backend = build_backend(spec, settings)
        readiness = backend.readiness()
        described = backend.describe()  # empty for vendors: they run elsewhere
        if described.get("device_warning") and described["device_warning"] not in warnings:
            warnings.append(described["device_warning"])
        runs_on = "vendor API"
        if "device" in described:
            configured = described.get("optimizations", {}).get("configured", [])
            runs_on = " ".join(["{device}/{dtype}".format(**described), *configured])
        rows.append((spec.id, spec.provider, "yes" if readiness.ready else "no", f"${spec.price_usd:.3f}",
                     runs_on, readiness.detail))
    print_table(rows)
    for warning in warnings:
        print(f"\nWARNING: {warning}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from pipelines.loading import download_weights
    from pipelines.tiny import TINY_KINDS, build_tiny_model

    settings = settings_from_args(args)
    spec = build_registry(settings).get(args.model)
    if spec is None or not spec.is_local:
        print(f"error: '{args.model}' is not a local model; `pull` fetches weights for local models only",
              file=sys.stderr)
        return 2
    if spec.kind in TINY_KINDS and not spec.source:
        print(f"built {build_tiny_model(settings.model_cache, spec.kind)} (random weights, nothing to download)")
        return 0
    if not spec.source:
        print(f"error: model '{args.model}' (kind {spec.kind}) has no `source`: set `source` under "
              f"[models.{args.model}] in the config file to a hub repo id or a local folder", file=sys.stderr)
        return 2
    if Path(spec.source).expanduser().exists():
        print(f"'{args.model}' loads from the local folder {spec.source}; nothing to download")
        return 0
    try:
        folder = download_weights(spec.source, settings.model_cache)
    except Exception as exc:  # network errors, gated repos, disk full: say what happened, no traceback
        print(f"error: could not download {spec.source}: {type(exc).__name__}: {exc}\n"
              "Gated repos (FLUX.1-dev, SD3) need an accepted licence and HF_TOKEN set.", file=sys.stderr)
        return 1
    print(f"downloaded {spec.source} into {folder}")
    return 0


def add_model_commands(commands: Any) -> None:
    """Register `models` and `pull` on the `imageserve` parser's subcommands."""
    models = commands.add_parser("models", help="list models with provider and readiness")
    add_config_option(models, help_text=None)
    models.set_defaults(handler=cmd_models)

    pull = commands.add_parser("pull", help="download a local model's weights into the model cache")
    pull.add_argument("model")
    add_config_option(pull, help_text=None)
    pull.set_defaults(handler=cmd_pull)

"""The `imageserve` command: serve, models, pull, doctor."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from server.settings import Settings, load_settings

logger = logging.getLogger("imageserve")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    for name in ("host", "port"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if args.config is not None and Path(args.config).is_dir():
        raise ValueError(f"--config {args.config} is a directory; give the TOML settings file")
    return load_settings(args.config, **overrides)


def check_database(settings: Settings) -> str | None:
    """Open the database (creating and migrating it) before serving. Returns an error.

    Otherwise an unreachable database only shows at the app's startup, as a traceback.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from server.accounts.database import Database

    database = Database.from_settings(settings)
    try:
        database.engine()
    except SQLAlchemyError as exc:
        return f"cannot open the {database.describe_error(exc)}"
    finally:
        database.dispose()
    return None


def check_exposure(settings: Settings) -> str | None:
    """Refuse an open server on a non-loopback address; warn loudly on loopback. Returns an error."""
    from sqlalchemy.exc import SQLAlchemyError

    from server.accounts.credentials import parse_api_keys
    from server.accounts.database import Database
    from server.accounts.keys import KeyStore

    if parse_api_keys(settings.api_keys.get_secret_value(), settings.tiers):
        return None
    database = Database.from_settings(settings)
    try:
        if KeyStore(database).has_active_keys():
            return None
    except SQLAlchemyError as exc:
        return f"cannot open the {database.describe_error(exc)}"
    finally:
        database.dispose()
    if not settings.listens_on_loopback_only():
        return (f"refusing to listen on {settings.host} without API keys: anyone who can reach it could use "
                "it. Create one with `imageserve keys create --tier pro`, set IMAGESERVE_API_KEYS "
                "(e.g. 'secret1:pro,secret2:free') or listen on 127.0.0.1.")
    banner = "!" * 78
    logger.warning("%s\nNO API KEYS CONFIGURED: accepting unauthenticated requests on loopback %s only.\n"
                   "Set IMAGESERVE_API_KEYS before exposing this server.\n%s", banner, settings.host, banner)
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pipelines.device import choose_placement
    from server.app import create_app

    settings = _settings(args)
    problem = check_database(settings) or check_exposure(settings)
    if problem:
        logger.error(problem)
        return 2
    placement = choose_placement(settings.device, settings.dtype)
    logger.info("imageserve on %s: local models run on %s (%s)", settings.base_url, placement,
                placement.reason or "CUDA available")
    if placement.warning:
        banner = "!" * 78
        logger.warning("%s\nGPU PRESENT BUT TORCH SEES NO CUDA DEVICE: %s\nFull-size local models (SD3, FLUX) "
                       "will not load; the tiny ones run on the CPU.\n%s", banner, placement.warning, banner)
    elif placement.cpu_fallback:
        logger.info("no CUDA device: full-size local models (SD3, FLUX) will not load on the CPU unless "
                    "IMAGESERVE_DEVICE=cpu; the tiny models run")
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from server.app import build_registry
    from server.backends.factory import build_backend

    settings = _settings(args)
    rows = [("MODEL", "PROVIDER", "READY", "PRICE/IMG", "RUNS ON", "STATUS")]
    warnings: list[str] = []
    for spec in build_registry(settings):
        backend = build_backend(spec, settings)
        readiness = backend.readiness()
        describe = getattr(backend, "describe", None)
        runs_on = "vendor API"
        if describe:
            described = describe()
            if described.get("device_warning") and described["device_warning"] not in warnings:
                warnings.append(described["device_warning"])
            configured = described.get("optimizations", {}).get("configured", [])
            runs_on = " ".join(["{device}/{dtype}".format(**described), *configured])
        rows.append((spec.id, spec.provider, "yes" if readiness.ready else "no", f"${spec.price_usd:.3f}",
                     runs_on, readiness.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    for warning in warnings:
        print(f"\nWARNING: {warning}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from pipelines.loading import download_weights
    from pipelines.tiny import TINY_KINDS, build_tiny_model
    from server.app import build_registry

    settings = _settings(args)
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


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print what this machine can and cannot do; exit 0 even when things are missing (it is a diagnosis)."""
    from server.cli.doctor import diagnose, render_text

    report = diagnose(_settings(args))
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imageserve", description="Self-hosted OpenAI-compatible image server.")
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the HTTP server")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML settings file")
    serve.set_defaults(handler=cmd_serve)

    models = commands.add_parser("models", help="list models with provider and readiness")
    models.add_argument("--config", type=Path, default=argparse.SUPPRESS)
    models.set_defaults(handler=cmd_models)

    pull = commands.add_parser("pull", help="download a local model's weights into the model cache")
    pull.add_argument("model")
    pull.add_argument("--config", type=Path, default=argparse.SUPPRESS)
    pull.set_defaults(handler=cmd_pull)

    doctor = commands.add_parser("doctor", help="diagnose torch, CUDA, GPUs, compilers, model cache and options")
    doctor.add_argument("--json", action="store_true", help="machine-readable output (for bug reports)")
    doctor.add_argument("--config", type=Path, default=argparse.SUPPRESS)
    doctor.set_defaults(handler=cmd_doctor)

    from server.cli.bench import add_bench_command

    add_bench_command(commands)

    from server.cli.admin import add_admin_commands

    add_admin_commands(commands)
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

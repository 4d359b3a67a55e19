"""The `imageserve` command: serve, models, pull."""

from __future__ import annotations

import argparse
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
    return load_settings(args.config, **overrides)


def check_exposure(settings: Settings) -> str | None:
    """Refuse an open server on a non-loopback address; warn loudly on loopback. Returns an error."""
    from sqlalchemy.exc import SQLAlchemyError

    from server.auth import parse_api_keys
    from server.db import Database
    from server.keys import KeyStore

    if parse_api_keys(settings.api_keys.get_secret_value(), settings.tiers):
        return None
    database = Database.from_settings(settings)
    try:
        if KeyStore(database).has_active_keys():
            return None
    except SQLAlchemyError as exc:
        return f"cannot open the database {database.display_url}: {str(exc).splitlines()[0]}"
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
    problem = check_exposure(settings)
    if problem:
        logger.error(problem)
        return 2
    placement = choose_placement(settings.device, settings.dtype)
    logger.info("imageserve on %s: local models run on %s (%s)", settings.base_url, placement,
                placement.reason or "CUDA available")
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from server.app import build_registry
    from server.backends import build_backend

    settings = _settings(args)
    rows = [("MODEL", "PROVIDER", "READY", "PRICE/IMG", "RUNS ON", "STATUS")]
    for spec in build_registry(settings):
        backend = build_backend(spec, settings)
        readiness = backend.readiness()
        describe = getattr(backend, "describe", None)
        runs_on = "vendor API"
        if describe:
            described = describe()
            configured = described.get("optimizations", {}).get("configured", [])
            runs_on = " ".join(["{device}/{dtype}".format(**described), *configured])
        rows.append((spec.id, spec.provider, "yes" if readiness.ready else "no", f"${spec.price_usd:.3f}",
                     runs_on, readiness.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
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
    if not spec.source or Path(spec.source).expanduser().exists():
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

    from server.bench import add_bench_command

    add_bench_command(commands)

    from server.cli_admin import add_admin_commands

    add_admin_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

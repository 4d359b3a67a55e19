"""`imageserve serve`: check the database and the exposure, then run the HTTP server."""

from __future__ import annotations

import argparse
import importlib.util
import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from server.accounts.database import Database
from server.accounts.keys import KeyStore
from server.accounts.setup import database_url, env_api_keys
from server.cli.common import add_config_option, settings_from_args
from server.settings import Settings

logger = logging.getLogger("imageserve")


def check_database(settings: Settings) -> str | None:
    """Open the database (creating and migrating it) before serving. Returns an error.

    Otherwise an unreachable database only shows at the app's startup, as a traceback.
    """
    database = Database(database_url(settings))
    try:
        database.engine()
    except SQLAlchemyError as exc:
        return f"cannot open the {database.describe_error(exc)}"
    finally:
        database.dispose()
    return None


def check_storage(settings: Settings) -> str | None:
    """Make sure generated images can be stored (the data dir, or the S3 bucket: it exists, we can write and
    delete there) before serving; one line naming the setting if not. Credentials are never printed."""
    from server.media.storage import load_or_create_signing_key
    from server.media.stored import StorageSetupError
    from server.media.stores import build_image_store

    try:
        key = load_or_create_signing_key(settings.data_dir, settings.url_signing_key.get_secret_value()
                                         if settings.url_signing_key else None)
        store = build_image_store(settings, key)
        store.check()
    except StorageSetupError as exc:
        return f"cannot store images: {exc}"
    except OSError as exc:
        return f"cannot store images in {settings.data_dir}: {exc.strerror or exc}"
    logger.info("generated images: %s", store.describe())
    return None


def check_exposure(settings: Settings) -> str | None:
    """Refuse an open server on a non-loopback address; warn loudly on loopback. Returns an error."""
    if env_api_keys(settings):
        return None
    database = Database(database_url(settings))
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

    settings = settings_from_args(args)
    problem = check_database(settings) or check_storage(settings) or check_exposure(settings)
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
    if args.ray:
        return serve_on_ray(args, settings)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def serve_on_ray(args: argparse.Namespace, settings: Settings) -> int:
    """`serve --ray`: the same application on Ray Serve (server.ray_serve), if Ray is installed."""
    from server.ray_serve import INSTALL_HINT

    # Not imported here (nor `ray.serve`, whose spec imports `ray`): Ray reads some of its settings from the
    # environment when it is imported, and `launch` sets them first.
    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # ValueError: a `ray` module without a spec (e.g. blocked in sys.modules)
        found = False
    if not found:
        logger.error("%s", INSTALL_HINT)
        return 2
    from server.ray_serve import launch
    from server.ray_serve.source import settings_source

    overrides = {name: value for name in ("host", "port") if (value := getattr(args, name, None)) is not None}
    source = settings_source(str(args.config) if args.config is not None else None, overrides)
    return launch.serve_on_ray(source, host=settings.host, port=settings.port, address=args.ray_address,
                               app_name=settings.ray.app_name)


def add_serve_command(commands: Any) -> None:
    """Register `serve` on the `imageserve` parser's subcommands."""
    serve = commands.add_parser("serve", help="start the HTTP server")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--ray", action="store_true",
                       help="run on Ray Serve: each local model a deployment of replicas (needs imageserve[ray])")
    serve.add_argument("--ray-address", default=None,
                       help="join the Ray cluster at this address (default: $RAY_ADDRESS, else start a local one)")
    add_config_option(serve)
    serve.set_defaults(handler=cmd_serve)

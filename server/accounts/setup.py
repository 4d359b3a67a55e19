"""The accounts components built from the whole `Settings`, for the edges (the app factory and the CLI).

`server.accounts` takes only the narrow values it needs (a database URL, parsed keys, a pepper, a
failure budget); this module is the one place that picks them out of `Settings`, so the app and the CLI
open the same database and check keys the same way.
"""

from __future__ import annotations

from server.accounts.authenticator import KeyAuthenticator
from server.accounts.credentials import load_key_pepper, parse_api_keys
from server.accounts.database import resolve_url
from server.accounts.keys import KeyStore
from server.settings import Settings


def database_url(settings: Settings) -> str:
    """`IMAGESERVE_DATABASE_URL`, else SQLite at `<data_dir>/imageserve.db`."""
    configured = settings.database_url.get_secret_value() if settings.database_url is not None else None
    return resolve_url(configured, settings.data_dir)


def env_api_keys(settings: Settings) -> dict[str, str]:
    """`IMAGESERVE_API_KEYS`, key -> tier, checked against the configured tiers (`[tiers.<name>]` included)."""
    return parse_api_keys(settings.api_keys.get_secret_value(), settings.tiers)


def key_pepper(settings: Settings) -> bytes:
    """`IMAGESERVE_KEY_PEPPER`, else a random pepper made once and kept in the data dir (mode 0600)."""
    return load_key_pepper(settings.data_dir, settings.key_pepper.get_secret_value() if settings.key_pepper else None)


def key_authenticator(settings: Settings, store: KeyStore) -> KeyAuthenticator:
    """The environment's keys and their pepper (made only when there is an env key), the failure budget."""
    env_keys = env_api_keys(settings)
    pepper = key_pepper(settings) if env_keys else b""  # no env key, no pepper file needed
    return KeyAuthenticator(store, env_keys, pepper=pepper, allow_open=settings.listens_on_loopback_only(),
                            failures_per_minute=settings.auth_failures_per_minute)

"""Where the deployments of the cluster mode read their settings: a config file path and explicit overrides.

The settings are not shipped to the replicas as an object: every replica (each on its own node) loads them
itself, from the same TOML file (same path on every node, e.g. a mounted ConfigMap) plus the overrides, and
from its own environment. Secrets (API keys, the database URL, vendor keys) therefore travel through each
node's environment (a Kubernetes Secret, or the environment `serve --ray` passes on to a local Ray), never
through Ray's deployment arguments, which Ray keeps in plain text.
"""

from __future__ import annotations

from typing import Any

from server.settings import Settings, load_settings

SECRET_FIELDS = frozenset({"api_keys", "database_url", "url_signing_key", "key_pepper", "providers"})


def settings_source(config: str | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The deployment argument: JSON-like, so it also fits `args:` in a Serve config file."""
    overrides = dict(overrides or {})
    secret = SECRET_FIELDS & set(overrides)
    if secret:
        raise ValueError(f"{', '.join(sorted(secret))}: secrets go in each node's environment (IMAGESERVE_...), "
                         "not in the Ray application's arguments")
    return {"config": config, "settings": overrides}


def load_from_source(source: dict[str, Any]) -> Settings:
    unknown = set(source) - {"config", "settings"}
    if unknown:
        raise ValueError(f"unknown application arguments: {', '.join(sorted(unknown))} (expected config, settings)")
    return load_settings(source.get("config"), **dict(source.get("settings") or {}))

"""Who is calling: the bearer-token parser, `Principal`, key fingerprints, and the environment's keys.

`server.accounts.authenticator.KeyAuthenticator` is what the app asks; it uses the pieces here. Keys from
`IMAGESERVE_API_KEYS` (`EnvKeys`) are compared in memory, in constant time against every configured key
(so timing does not reveal which prefix matched); keys made by `imageserve keys create` are looked up in
the database by hash. No key is ever logged: a `Principal` carries only a fingerprint.

Fingerprints. A generated key (`isk_` plus 256 random bits) is named by a plain SHA-256: nothing can be
brute-forced from it. An environment key is chosen by an operator and may be weak (`change-me`), so it
is named by HMAC-SHA256 under the server's key pepper (`IMAGESERVE_KEY_PEPPER`, else a random one kept
in the data dir: `load_key_pepper`): its fingerprint in logs, the ledger and `/v1/usage`, and its stored
hash, say nothing about the key to someone who has them but not the pepper.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from server.errors import AuthenticationError
from server.secret_files import load_or_create_secret
from server.settings import DEFAULT_TIERS

MISSING_KEY = "Missing API key: send it as `Authorization: Bearer YOUR_API_KEY`."
MALFORMED_HEADER = "Malformed Authorization header: expected `Bearer YOUR_API_KEY`."
KEY_PEPPER_FILENAME = "key_pepper.key"


@dataclass(frozen=True)
class Principal:
    key_id: str  # a hash-derived id, safe to log and store; never the key itself
    name: str
    tier: str


ANONYMOUS = Principal(key_id="anonymous", name="anonymous", tier="enterprise")


def bearer_token(authorization: str | None) -> str:
    """The key in `Authorization: Bearer KEY`, or `AuthenticationError` saying what is wrong."""
    if not authorization:
        raise AuthenticationError(MISSING_KEY)
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(MALFORMED_HEADER)
    return token.strip()


def key_digest(key: str, pepper: bytes | None) -> str:
    """Hex SHA-256 of a key; HMAC-SHA256 under `pepper` for operator-chosen keys (see the module docs)."""
    if pepper is None:
        return hashlib.sha256(key.encode()).hexdigest()
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def key_fingerprint(key: str, pepper: bytes | None) -> str:
    """The id a key goes by in logs, the ledger and reports: `key_` and 16 hex digits of its digest."""
    return "key_" + key_digest(key, pepper)[:16]


def load_key_pepper(data_dir: Path, configured: str | None) -> bytes:
    """The configured pepper (`IMAGESERVE_KEY_PEPPER`), else a random one made once and kept in `data_dir` (0600)."""
    return load_or_create_secret(data_dir, configured, KEY_PEPPER_FILENAME)


def parse_api_keys(raw: str, tiers: Iterable[str] = DEFAULT_TIERS) -> dict[str, str]:
    """`"k1:free,k2"` -> {"k1": "free", "k2": "pro"}. A bare key means tier `pro`.

    `tiers` are the configured tier names (`Settings.tiers`, which includes `[tiers.<name>]` tables).
    """
    known = sorted(tiers)
    keys: dict[str, str] = {}
    for index, item in enumerate(part.strip() for part in raw.split(",")):
        if not item:
            continue
        key, _, tier = item.rpartition(":") if ":" in item else (item, "", "pro")
        tier = tier.strip().lower() or "pro"
        if tier not in known:  # not echoed: after a ':' inside a key, it would be part of the key
            raise ValueError(f"IMAGESERVE_API_KEYS entry #{index + 1} has an unknown tier (the part after its last "
                             f"':'); configured tiers: {', '.join(known)}. A key containing ':' needs its tier "
                             "after it, e.g. KEY:pro")
        if not key.strip():
            raise ValueError(f"IMAGESERVE_API_KEYS entry #{index + 1} has an empty key")
        if key.strip() in keys:
            raise ValueError(f"IMAGESERVE_API_KEYS entry #{index + 1} repeats an earlier key")
        keys[key.strip()] = tier
    return keys


class EnvKeys:
    """The keys from `IMAGESERVE_API_KEYS`, matched in constant time and named by peppered fingerprints."""

    def __init__(self, keys: dict[str, str], pepper: bytes) -> None:
        self._keys = [(key.encode(), tier, key_fingerprint(key, pepper)) for key, tier in keys.items()]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def match(self, token: str) -> Principal | None:
        candidate = token.encode()
        found: Principal | None = None
        for key, tier, fingerprint in self._keys:
            if hmac.compare_digest(key, candidate) and found is None:
                found = Principal(key_id=fingerprint, name=fingerprint, tier=tier)
        return found

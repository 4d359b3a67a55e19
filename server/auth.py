"""Bearer-key authentication against the keys in `IMAGESERVE_API_KEYS`.

Keys are compared in constant time (against every configured key, so timing does not reveal which
prefix matched) and are never logged: a `Principal` carries only a short hash-derived id. With no key
configured the server is open, which `server.cli` allows only on a loopback address.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from server.errors import AuthenticationError

TIERS = ("free", "pro", "enterprise")


@dataclass(frozen=True)
class Principal:
    key_id: str  # a hash-derived id, safe to log and store; never the key itself
    name: str
    tier: str


ANONYMOUS = Principal(key_id="anonymous", name="anonymous", tier="enterprise")


def key_fingerprint(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def parse_api_keys(raw: str) -> dict[str, str]:
    """`"k1:free,k2"` -> {"k1": "free", "k2": "pro"}. A bare key means tier `pro`."""
    keys: dict[str, str] = {}
    for index, item in enumerate(part.strip() for part in raw.split(",")):
        if not item:
            continue
        key, _, tier = item.rpartition(":") if ":" in item else (item, "", "pro")
        tier = tier.strip().lower() or "pro"
        if tier not in TIERS:
            raise ValueError(f"IMAGESERVE_API_KEYS entry #{index + 1} has unknown tier {tier!r}; use one of {TIERS}")
        if not key.strip():
            raise ValueError(f"IMAGESERVE_API_KEYS entry #{index + 1} has an empty key")
        keys[key.strip()] = tier
    return keys


class Authenticator:
    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = [(key.encode(), tier, key_fingerprint(key)) for key, tier in keys.items()]

    @property
    def open(self) -> bool:
        """True when no key is configured: every request is accepted (loopback only)."""
        return not self._keys

    def authenticate(self, authorization: str | None) -> Principal:
        if self.open:
            return ANONYMOUS
        if not authorization:
            raise AuthenticationError("Missing API key: send it as `Authorization: Bearer YOUR_API_KEY`.")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("Malformed Authorization header: expected `Bearer YOUR_API_KEY`.")
        candidate = token.strip().encode()
        found: Principal | None = None
        for key, tier, fingerprint in self._keys:
            if hmac.compare_digest(key, candidate) and found is None:
                found = Principal(key_id=fingerprint, name=fingerprint, tier=tier)
        if found is None:
            raise AuthenticationError("Incorrect API key provided.")
        return found

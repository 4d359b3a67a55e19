"""API keys in the database: create, list, revoke, find, and the rows of the environment's keys.

A key is `isk_` plus 256 random bits; only its SHA-256 is stored, so a stolen database yields no key
(and with that much entropy a plain hash is enough: there is nothing to brute-force offline). A key is
shown once, by `imageserve keys create`. Keys from `IMAGESERVE_API_KEYS` keep working: they
authenticate from the environment and get a row (named by their fingerprint) for usage and limits.
Operator-chosen keys may be weak, so their fingerprint and stored hash are HMACs under the key pepper
(`load_key_pepper`; see `server.accounts.credentials`).

`KeyStore.find` only reads the database (a deferred transaction on SQLite): checking a wrong key never
takes the write lock, never waits behind admissions, and never writes; `last_used_at` is written by
admission. The checking itself is `server.accounts.authenticator.KeyAuthenticator`.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from server.accounts.credentials import ANONYMOUS, Principal, key_digest, key_fingerprint
from server.accounts.database import Database, api_keys, insert_ignore, usage_ledger

logger = logging.getLogger(__name__)

KEY_PREFIX = "isk_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hash_key(key: str) -> str:
    """What is stored for a generated key: its plain SHA-256 (256 random bits need no pepper)."""
    return key_digest(key, None)


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyRecord:
    """A key's row, without its hash."""

    key_id: str
    name: str
    tier: str
    source: str  # "db", "env" or "builtin"
    images_per_minute: int | None
    images_per_day: int | None
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def principal(self) -> Principal:
        return Principal(key_id=self.key_id, name=self.name, tier=self.tier)

    @classmethod
    def from_row(cls, row: Any) -> KeyRecord:
        m = row._mapping
        return cls(m["key_id"], m["name"], m["tier"], m["source"], m["images_per_minute"], m["images_per_day"],
                   m["created_at"], m["last_used_at"], m["revoked_at"])


_RECORD_COLUMNS = [c for c in api_keys.c if c.name != "key_hash"]


class KeyStore:
    """Sync key operations, for the CLI and (through threads) the server."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def create(self, tier: str, name: str | None = None, images_per_minute: int | None = None,
               images_per_day: int | None = None) -> tuple[str, KeyRecord]:
        """Make a key; returns (the key, shown once, its record)."""
        key = generate_key()
        key_id = key_fingerprint(key, None)
        name = name or f"key-{key_id.removeprefix('key_')[:8]}"
        if not _NAME.match(name) or name.startswith("key_"):
            raise ValueError(f"invalid key name {name!r}: use letters, digits, '.', '_', '-' (up to 64), "
                             "not starting with 'key_'")
        for label, value in (("images per minute", images_per_minute), ("images per day", images_per_day)):
            if value is not None and value < 0:
                raise ValueError(f"{label} must be 0 (no limit) or more")
        with self.db.transaction() as conn:
            if conn.scalar(select(api_keys.c.key_id).where(api_keys.c.name == name)) is not None:
                raise ValueError(f"a key named {name!r} already exists")
            conn.execute(api_keys.insert().values(
                key_id=key_id, name=name, key_hash=hash_key(key), source="db", tier=tier,
                images_per_minute=images_per_minute, images_per_day=images_per_day, created_at=self.clock()))
            row = conn.execute(select(*_RECORD_COLUMNS).where(api_keys.c.key_id == key_id)).one()
        logger.info("created key %s (%s, tier %s)", name, key_id, tier)
        return key, KeyRecord.from_row(row)

    def list(self) -> list[KeyRecord]:
        with self.db.read() as conn:
            rows = conn.execute(select(*_RECORD_COLUMNS).order_by(api_keys.c.created_at)).all()
        return [KeyRecord.from_row(row) for row in rows]

    def revoke(self, name: str) -> KeyRecord:
        with self.db.transaction() as conn:
            row = conn.execute(select(*_RECORD_COLUMNS).where(api_keys.c.name == name)).one_or_none()
            if row is None:
                raise ValueError(f"no key named {name!r}")
            record = KeyRecord.from_row(row)
            if record.source != "db":
                origin = "IMAGESERVE_API_KEYS" if record.source == "env" else "the server itself"
                raise ValueError(f"key {name!r} comes from {origin}; it cannot be revoked here")
            if record.active:
                conn.execute(update(api_keys).where(api_keys.c.key_id == record.key_id)
                             .values(revoked_at=self.clock()))
        logger.info("revoked key %s (%s)", name, record.key_id)
        return record

    def find(self, key: str) -> KeyRecord | None:
        """The database key with this secret, revoked or not. Read-only."""
        with self.db.read() as conn:
            row = conn.execute(select(*_RECORD_COLUMNS).where(
                api_keys.c.key_hash == hash_key(key), api_keys.c.source == "db")).one_or_none()
        return None if row is None else KeyRecord.from_row(row)

    def has_active_keys(self) -> bool:
        with self.db.read() as conn:
            found = conn.scalar(select(api_keys.c.key_id).where(
                api_keys.c.source == "db", api_keys.c.revoked_at.is_(None)).limit(1))
        return found is not None

    def sync_env_keys(self, env_keys: dict[str, str], pepper: bytes) -> None:
        """Give each environment key (and the anonymous principal) a row; the environment sets its tier.

        Rows made before env keys were peppered (named by a plain SHA-256 fingerprint) are re-keyed to
        the peppered fingerprint, usage and all, so limits and history carry over.
        """
        now = self.clock()
        with self.db.transaction() as conn:
            insert_ignore(conn, api_keys, key_id=ANONYMOUS.key_id, name=ANONYMOUS.name, key_hash=None,
                          source="builtin", tier=ANONYMOUS.tier, created_at=now)
            for key, tier in env_keys.items():
                key_id = key_fingerprint(key, pepper)
                _rekey_legacy_env_row(conn, key, key_id, key_digest(key, pepper))
                insert_ignore(conn, api_keys, key_id=key_id, name=key_id, key_hash=key_digest(key, pepper),
                              source="env", tier=tier, created_at=now)
                conn.execute(update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.source == "env",
                                                    api_keys.c.tier != tier).values(tier=tier))


def _rekey_legacy_env_row(conn: Connection, key: str, key_id: str, key_hash: str) -> None:
    """Move an env key's row from its unpeppered fingerprint to `key_id`, with its ledger rows."""
    legacy_id = key_fingerprint(key, None)
    exists = select(api_keys.c.key_id).where(api_keys.c.key_id == key_id)
    if legacy_id == key_id or conn.scalar(exists) is not None:
        return
    moved = conn.execute(update(api_keys).where(api_keys.c.key_id == legacy_id, api_keys.c.source == "env").values(
        key_id=key_id, name=key_id, key_hash=key_hash)).rowcount
    if moved:
        entries = conn.execute(update(usage_ledger).where(usage_ledger.c.key_id == legacy_id).values(
            key_id=key_id)).rowcount
        # The old id is an unsalted hash of the key: not logged.
        logger.info("re-keyed environment key %s to its peppered fingerprint (%d ledger rows)", key_id, entries)

"""API keys in the database, and the authenticator that checks them.

A key is `isk_` plus 256 random bits; only its SHA-256 is stored, so a stolen database yields no key
(and with that much entropy a plain hash is enough: there is nothing to brute-force offline). A key is
shown once, by `imageserve keys create`. Keys from `IMAGESERVE_API_KEYS` keep working: they
authenticate from the environment and get a row (named by their fingerprint) for usage and limits.
Operator-chosen keys may be weak, so their fingerprint and stored hash are HMACs under the key pepper
(`load_key_pepper`; see `server.accounts.credentials`).

The server is open (every request is anonymous) only when there is no key at all, neither in the
environment nor active in the database, and only on loopback: `server.cli.main.check_exposure` refuses to
start otherwise, and `KeyAuthenticator` refuses requests if the last key is revoked while listening
elsewhere.

Checking a key only reads the database (a deferred transaction on SQLite): a wrong key never takes the
write lock, never waits behind admissions, and never writes; `last_used_at` is written by admission.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select, update

from server.accounts.credentials import (
    ANONYMOUS,
    EnvKeys,
    Principal,
    bearer_token,
    key_digest,
    key_fingerprint,
    parse_api_keys,
)
from server.accounts.database import Database, api_keys, insert_ignore, usage_ledger
from server.accounts.quotas import FailureLimiter
from server.errors import AuthenticationError
from server.media.storage import load_or_create_signing_key

if TYPE_CHECKING:
    from server.settings import Settings

logger = logging.getLogger(__name__)

KEY_PREFIX = "isk_"
KEY_PEPPER_FILENAME = "key_pepper.key"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hash_key(key: str) -> str:
    """What is stored for a generated key: its plain SHA-256 (256 random bits need no pepper)."""
    return key_digest(key, None)


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def load_key_pepper(settings: Settings) -> bytes:
    """`IMAGESERVE_KEY_PEPPER`, else a random pepper made once and kept in the data dir (mode 0600)."""
    configured = settings.key_pepper.get_secret_value() if settings.key_pepper else None
    return load_or_create_signing_key(settings.data_dir, configured, KEY_PEPPER_FILENAME)


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


class KeyAuthenticator:
    """Bearer keys from the environment (in memory, constant time), then from the database by hash.

    Wrong keys count against the client address; past `failures_per_minute` it gets 429s (see
    `FailureLimiter`). The count is per process, and the address is the TCP peer's (behind a reverse
    proxy, the proxy's: `X-Forwarded-For` is not trusted). Database lookups run in a worker thread.
    """

    def __init__(self, store: KeyStore, env_keys: dict[str, str], *, pepper: bytes, allow_open: bool,
                 failures_per_minute: int = 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.env_keys = env_keys
        self.pepper = pepper
        self._env = EnvKeys(env_keys, pepper)
        self.allow_open = allow_open
        self.failures = FailureLimiter(failures_per_minute, clock=clock)

    @classmethod
    def from_settings(cls, settings: Settings, store: KeyStore) -> KeyAuthenticator:
        """Env keys checked against the configured tiers (`[tiers.<name>]` included), and the pepper."""
        env_keys = parse_api_keys(settings.api_keys.get_secret_value(), settings.tiers)
        pepper = load_key_pepper(settings) if env_keys else b""  # no env key, no pepper file needed
        return cls(store, env_keys, pepper=pepper, allow_open=settings.listens_on_loopback_only(),
                   failures_per_minute=settings.auth_failures_per_minute)

    def prepare(self) -> None:
        """Sync: create or migrate the database and give the environment keys their rows."""
        self.store.sync_env_keys(self.env_keys, self.pepper)

    async def is_open(self) -> bool:
        return not self._env and not await asyncio.to_thread(self.store.has_active_keys)

    async def authenticate(self, authorization: str | None, client_ip: str | None = None) -> Principal:
        self.failures.check(client_ip)
        try:
            token = bearer_token(authorization)
        except AuthenticationError:
            if await self._open():
                return ANONYMOUS
            raise
        principal = self._env.match(token)
        if principal is not None:
            return principal
        record = await asyncio.to_thread(self.store.find, token)
        if record is not None and record.active:
            return record.principal()
        if record is None and await self._open():
            return ANONYMOUS
        self.failures.record(client_ip)
        if record is not None:
            logger.info("refused revoked key %s from %s", record.name, client_ip)
            raise AuthenticationError("This API key has been revoked.")
        logger.info("refused an unknown API key from %s", client_ip)
        raise AuthenticationError("Incorrect API key provided.")

    async def _open(self) -> bool:
        if not await self.is_open():
            return False
        if not self.allow_open:
            raise AuthenticationError("No API key is configured on this server; create one with "
                                      "`imageserve keys create`.")
        return True

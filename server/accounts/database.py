"""The database behind keys, quotas and the usage ledger: SQLite in the data dir, or PostgreSQL.

Everything goes through SQLAlchemy Core on a sync engine; callers run it in worker threads
(`asyncio.to_thread`) so the event loop never waits on the database. Admission must be exact across
threads, processes and replicas, so write transactions lock: on SQLite `Database.transaction` starts
with `BEGIN IMMEDIATE` (the database write lock, taken up front rather than on the first write, so two
admissions cannot both read the old count); on PostgreSQL the quota code locks the key's row with
`SELECT ... FOR UPDATE`, which serialises admissions per key across replicas. Read-only work (key
lookups, reports) uses `Database.read`: a plain deferred transaction, which on SQLite in WAL mode reads
a snapshot without the write lock, so it neither waits behind admissions nor holds them up.

The schema is created and migrated when the engine is first used: `schema_migrations` holds the applied
versions, and each migration runs once, in a transaction, under a lock (PostgreSQL: an advisory lock),
so replicas starting together do not race.

`usage_daily` holds per-day totals of ledger rows folded away by the retention setting
(server/accounts/retention.py); reports read the ledger and it together.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from server.redaction import redact

logger = logging.getLogger(__name__)

DB_FILENAME = "imageserve.db"
_MIGRATION_LOCK_ID = 0x1A6E5E  # PostgreSQL advisory lock held while migrating

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("description", String(200), nullable=False),
    Column("applied_at", Double, nullable=False),
)

# One row per key that can be charged: keys made with `imageserve keys create` (source "db"), keys from
# IMAGESERVE_API_KEYS (source "env": they authenticate from the environment, the row carries their usage
# and the lock), and the anonymous principal of an open server (source "builtin").
api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(40), primary_key=True),  # server.accounts.credentials.key_fingerprint (env keys: peppered)
    Column("name", String(128), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=True, unique=True),  # server.accounts.credentials.key_digest, never the key
    Column("source", String(16), nullable=False),
    Column("tier", String(64), nullable=False),
    Column("images_per_minute", Integer, nullable=True),  # the key's own limits; NULL: the tier's; 0: none
    Column("images_per_day", Integer, nullable=True),
    Column("created_at", Double, nullable=False),
    Column("last_used_at", Double, nullable=True),
    Column("revoked_at", Double, nullable=True),
)

# One row per admitted or refused request. `images` is what counts against the limits: the reserved `n`
# while the request runs, then the images actually produced (failed ones are given back).
usage_ledger = Table(
    "usage_ledger",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, unique=True),
    Column("key_id", String(40), nullable=False),
    Column("ts", Double, nullable=False),  # admission time, epoch seconds
    Column("day", String(10), nullable=False),  # UTC date of `ts`, YYYY-MM-DD, for per-day totals
    Column("model", String(128), nullable=False),
    Column("requested", Integer, nullable=False),
    Column("images", Integer, nullable=False),
    Column("size", String(16), nullable=True),
    Column("quality", String(16), nullable=True),
    Column("cost_usd", Double, nullable=False, default=0.0),
    Column("latency_ms", Double, nullable=True),
    Column("status", String(64), nullable=False),  # pending, ok, rate_limit_exceeded, or an error type
    Column("finished_at", Double, nullable=True),
    Index("ix_usage_ledger_key_ts", "key_id", "ts"),
    Index("ix_usage_ledger_key_day", "key_id", "day"),
)


# Per-day totals of ledger rows older than the retention window (`Settings.usage_retention_days`), added to
# when they are folded away: what `_totals` in server/accounts/ledger.py would count for those rows.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("key_id", String(40), primary_key=True),
    Column("model", String(128), primary_key=True),
    Column("day", String(10), primary_key=True),  # UTC date, YYYY-MM-DD, as usage_ledger.day
    Column("images", BigInteger, nullable=False),  # images of the rows with status "ok"
    Column("cost_usd", Double, nullable=False),  # their cost
    Column("requests", BigInteger, nullable=False),  # every folded row, whatever its status
)


def _migration_1(conn: Connection) -> None:
    api_keys.create(conn, checkfirst=True)
    usage_ledger.create(conn, checkfirst=True)


def _migration_2(conn: Connection) -> None:
    usage_daily.create(conn, checkfirst=True)
    # Retention looks for the oldest days first; plain DDL, so usage_ledger's definition (migration 1) stays as is.
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_usage_ledger_day ON usage_ledger (day)"))


# (version, description, step). Append only; a step must not depend on the tables' current definitions
# once a later migration changes them.
MIGRATIONS: tuple[tuple[int, str, Callable[[Connection], None]], ...] = (
    (1, "api keys and usage ledger", _migration_1),
    (2, "per-day usage totals for retention", _migration_2),
)


def resolve_url(configured: str | None, data_dir: Path) -> str:
    """The SQLAlchemy URL: the configured one (`IMAGESERVE_DATABASE_URL`), else SQLite at `<data_dir>/imageserve.db`."""
    if configured is not None and configured.strip():
        return normalise_url(configured.strip())
    return f"sqlite:///{(Path(data_dir) / DB_FILENAME).resolve()}"


def normalise_url(url: str) -> str:
    """Plain `postgresql://` (what operators write) runs on psycopg 3."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


URL_SETTING = "IMAGESERVE_DATABASE_URL"
URL_FORMS = "sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
_QUERY_PASSWORD = re.compile(r"(?i)([?&;][^=&;#]*password=)([^&;#]*)")


class DatabaseUrlError(ValueError):
    """The database URL cannot be used. The message names IMAGESERVE_DATABASE_URL and holds no secret."""


def _split_userinfo(url: str) -> tuple[str, str, str] | None:
    """(scheme, userinfo, rest) of a `scheme://` URL, or None if it has no `://`.

    The userinfo ends at the LAST `@` before the path or query that follows the first `@`, so a raw `@`
    (or `/`, `?`) in a password stays in the userinfo and is masked whole.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    first_at = rest.find("@")
    if first_at < 0:
        return scheme, "", rest
    ends = [i for i in (rest.find("/", first_at), rest.find("?", first_at)) if i >= 0]
    at = rest.rfind("@", 0, min(ends, default=len(rest)))
    return scheme, rest[:at], rest[at + 1:]


def url_secrets(url: str) -> set[str]:
    """Every password the URL carries, raw and decoded, however it is parsed: what must never be shown."""
    found: set[str] = set()
    parts = _split_userinfo(url)
    if parts is not None:
        found.add(parts[1].partition(":")[2])
        found.update(match.group(2) for match in _QUERY_PASSWORD.finditer(parts[2]))
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        parsed = None
    if parsed is not None:
        found.add(parsed.password or "")
        found.update(str(value) for key, value in parsed.query.items() if key.lower().endswith("password"))
    found |= {unquote(secret) for secret in found}
    return {secret for secret in found if secret}


def mask_url(url: str) -> str:
    """The URL with its passwords masked (userinfo and `password=` query parameters), safe to show.

    Never raises: error messages about the URL print it.
    """
    parts = _split_userinfo(url)
    if parts is None:
        return "(not a URL)"
    scheme, userinfo, rest = parts
    path, mark, query = rest.partition("?")
    rest = path + _QUERY_PASSWORD.sub(r"\g<1>***", mark + query)
    if not userinfo:
        return f"{scheme}://{rest}"
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{rest}"


def check_url(url: str) -> URL:
    """Parse the URL, or raise `DatabaseUrlError` saying what is wrong (never with its password)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUrlError(f"{URL_SETTING} is not a database URL; expected {URL_FORMS}") from None
    except ValueError:
        raise DatabaseUrlError(f"{URL_SETTING} {mask_url(url)}: the port must be a number") from None
    shown = mask_url(url)
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseUrlError(f"{URL_SETTING} {shown}: unsupported database {parsed.get_backend_name()!r}; "
                               f"use {URL_FORMS}")
    if parsed.host and "@" in parsed.host:
        raise DatabaseUrlError(f"{URL_SETTING} {shown}: more than one '@' before the host; percent-encode an "
                               "'@' in the user name or password as %40")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise DatabaseUrlError(f"{URL_SETTING} {shown}: port {parsed.port} is not between 1 and 65535")
    _check_driver(parsed, shown)
    return parsed


def _check_driver(parsed: URL, shown: str) -> None:
    """The driver must be installed and synchronous: fail now, not with an ImportError at first use."""
    try:
        dialect = parsed.get_dialect()
        dialect.import_dbapi()
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseUrlError(f"{URL_SETTING} {shown}: the driver {parsed.drivername!r} is not installed "
                               f"({exc}); plain postgresql:// runs on psycopg 3 (pip install 'psycopg[binary]')"
                               ) from None
    if getattr(dialect, "is_async", False):
        raise DatabaseUrlError(f"{URL_SETTING} {shown}: {parsed.drivername!r} is an asyncio driver; "
                               "use plain postgresql:// (psycopg 3)")


_READ_ONLY = "imageserve_read_only"  # execution option set by `Database.read`


def _sqlite_engine(url: str, lock_timeout: float) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": lock_timeout, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy issues BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")

    return engine


def _migrate(engine: Engine) -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
        schema_migrations.create(conn, checkfirst=True)
        applied = set(conn.scalars(select(schema_migrations.c.version)))
        for version, description, step in MIGRATIONS:
            if version in applied:
                continue
            logger.info("database: applying migration %d (%s)", version, description)
            step(conn)
            conn.execute(insert(schema_migrations).values(
                version=version, description=description, applied_at=time.time()))


class Database:
    """A lazily created, migrated engine. Thread-safe; one per process and URL is plenty."""

    def __init__(self, url: str, lock_timeout: float = 30.0) -> None:
        self.url = normalise_url(url)
        check_url(self.url)  # a bad URL is a clear error now, not a traceback at first use
        self.lock_timeout = lock_timeout  # SQLite: how long to wait for the write lock before failing
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @property
    def display_url(self) -> str:
        """The URL with any password masked, safe to log."""
        return mask_url(self.url)

    def describe_error(self, exc: Exception) -> str:
        """One line about a failed database operation, naming the database, without its password."""
        first_line = (str(exc).splitlines() or [""])[0]
        return redact(f"database {self.display_url}: {type(exc).__name__}: {first_line}", url_secrets(self.url))

    def engine(self) -> Engine:
        """The engine, created and migrated on first use."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    if self.url.startswith("sqlite"):
                        engine = _sqlite_engine(self.url, self.lock_timeout)
                    else:
                        engine = create_engine(self.url, pool_pre_ping=True, pool_size=8, max_overflow=16)
                    try:
                        _migrate(engine)
                    except Exception:
                        engine.dispose()
                        raise
                    self._engine = engine
        return self._engine

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction, committed on success. On SQLite it holds the write lock from the start."""
        with self.engine().begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """One read-only transaction: a consistent snapshot, and on SQLite no write lock."""
        with self.engine().connect() as conn:
            conn.execution_options(**{_READ_ONLY: True})
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


def _dialect_insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert(table)


def insert_ignore(conn: Connection, table: Table, **values: Any) -> None:
    """INSERT ... ON CONFLICT DO NOTHING, on SQLite and PostgreSQL alike."""
    conn.execute(_dialect_insert(conn, table).values(**values).on_conflict_do_nothing())


def insert_or_add(conn: Connection, table: Table, rows: list[dict[str, Any]], added: tuple[str, ...]) -> None:
    """INSERT each row, or on a primary-key conflict add its `added` columns to the stored row's (one atomic
    statement per row: two writers adding to the same row both count)."""
    if not rows:
        return
    statement = _dialect_insert(conn, table)
    statement = statement.on_conflict_do_update(
        index_elements=[column.name for column in table.primary_key.columns],
        set_={name: table.c[name] + statement.excluded[name] for name in added})
    conn.execute(statement, rows)

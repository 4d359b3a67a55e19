"""A throwaway PostgreSQL server for tests: initdb in a temp dir, listen on 127.0.0.1 on a free port.

Found on PATH or under /usr/lib/postgresql/*/bin (Debian's `postgresql` package). PostgreSQL refuses
to run as root, so as root it runs as the `postgres` user (or `TEST_POSTGRES_USER`) through
`runuser`, with the temp dir handed to that user. `TEST_POSTGRES_URL` points the tests at an existing
server instead. One server serves the whole test run (stopped at exit); each test gets a fresh database.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRE_ENV = "IMAGESERVE_TEST_REQUIRE_POSTGRES"


@dataclass
class PostgresServer:
    url: str  # to the `postgres` maintenance database, as postgresql://...
    stop: object = None

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_postgres() -> tuple[PostgresServer | None, str]:
    """Start a server, or return (None, why not)."""
    if os.environ.get("TEST_POSTGRES_URL"):
        return PostgresServer(os.environ["TEST_POSTGRES_URL"]), ""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not initdb or not pg_ctl:
        return None, "PostgreSQL is not installed (no initdb/pg_ctl; on Debian: apt-get install postgresql)"
    prefix: list[str] = []
    user = None
    if os.geteuid() == 0:
        user = os.environ.get("TEST_POSTGRES_USER", "postgres")
        try:
            pwd.getpwnam(user)
        except KeyError:
            return None, f"running as root and there is no '{user}' user to run PostgreSQL as"
        runuser = shutil.which("runuser")
        if runuser is None:
            return None, "running as root and `runuser` is missing"
        prefix = [runuser, "-u", user, "--"]
    root = Path(tempfile.mkdtemp(prefix="imageserve-pg-"))
    if user is not None:
        shutil.chown(root, user=user)
    data, port = root / "data", _free_port()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120, check=False)

    done = run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        return None, f"initdb failed: {(done.stderr or done.stdout).strip()[-500:]}"
    options = f"-h 127.0.0.1 -p {port} -k {root} -F -c max_connections=200"
    done = run(pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "-t", "60", "start")
    if done.returncode != 0:
        log = (root / "log").read_text(errors="replace")[-500:] if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        return None, f"pg_ctl start failed: {(done.stderr or done.stdout).strip()[-300:]} {log}"

    def stop() -> None:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)

    return PostgresServer(f"postgresql://postgres@127.0.0.1:{port}/postgres", stop), ""


_server: PostgresServer | None = None
_failure: str | None = None


def postgres_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes")


def postgres() -> PostgresServer:
    """The shared test server, started on first use; skips the test if it cannot start (fails instead when
    `IMAGESERVE_TEST_REQUIRE_POSTGRES=1`)."""
    global _server, _failure
    if _server is None and _failure is None:
        _server, _failure = start_postgres()
        if _server is not None and callable(_server.stop):
            atexit.register(_server.stop)
    if _server is None:
        if postgres_required():
            pytest.fail(f"PostgreSQL is required ({REQUIRE_ENV}=1) but could not start: {_failure}", pytrace=False)
        pytest.skip(f"PostgreSQL tests skipped: {_failure}")
    return _server

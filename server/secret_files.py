"""Secrets the operator may configure, else generated once and kept in the data dir.

The URL signing key (`server.media.storage`) and the key pepper (`server.accounts.credentials`) both work
this way: a configured value wins; without one, 32 random bytes are written once to a file in the data
dir (mode 0600) and read back on every later start, so what they sign or fingerprint survives a restart.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

MIN_SECRET_BYTES = 16


def load_or_create_secret(data_dir: Path, configured: str | None, file_name: str) -> bytes:
    """The configured secret, else one generated once and kept in `data_dir / file_name` (mode 0600).

    Written to a temporary file and linked into place, so replicas starting together on a shared data
    dir agree on one secret and nobody ever reads a half-written (or empty) one.
    """
    if configured:
        return configured.encode()
    path = data_dir / file_name
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=data_dir, prefix=f".{file_name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
            os.chmod(temporary, 0o600)
            with contextlib.suppress(FileExistsError):  # another process won: use its secret
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    secret = path.read_bytes()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{path} holds no usable secret; delete it to have a new one generated")
    return secret

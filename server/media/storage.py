"""Generated images on disk, served through URLs signed with an HMAC and an expiry.

A URL carries `expires` (unix seconds) and `sig` = HMAC-SHA256(key, "name:expires"). No auth header
is needed to fetch it; a tampered or expired link is refused; expired files are deleted by the store's
own periodic sweep, which runs between `start()` and `stop()` (and when an expired link is fetched). The
signing key comes from the settings or is generated once and kept in the data dir (mode 0600), so links
survive a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

from server.errors import LinkExpired, LinkForbidden, NotFound
from server.lifecycle import BackgroundTask
from server.secret_files import load_or_create_secret

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_-]{8,80}\.(png|jpeg|webp)$")
_EXPIRES = re.compile(r"^[0-9]{1,12}$")
PARTIAL_SUFFIX = ".part"
PARTIAL_GRACE_SECONDS = 3600  # a half-written file this old was left by a crash
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
SIGNING_KEY_FILENAME = "url_signing.key"


def load_or_create_signing_key(data_dir: Path, configured: str | None, file_name: str = SIGNING_KEY_FILENAME) -> bytes:
    """The configured URL signing key, else one generated once and kept in the data dir (mode 0600)."""
    return load_or_create_secret(data_dir, configured, file_name)


class ImageStore:
    def __init__(
        self,
        directory: Path,
        signing_key: bytes,
        base_url: str,
        ttl_seconds: int,
        clock: Callable[[], float] = time.time,
        sweep_every: float = 60.0,
    ) -> None:
        self.directory = directory
        self._key = signing_key
        self._base_url = base_url.rstrip("/")
        self._ttl = ttl_seconds
        self.clock = clock
        self._sweep_every = sweep_every
        self._sweeper = BackgroundTask("image-store-sweep", self._sweep_forever)
        directory.mkdir(parents=True, exist_ok=True)

    async def start(self) -> None:
        """Sweep expired images now and then every `sweep_every` seconds, until `stop()`."""
        await self._sweeper.start()

    async def stop(self) -> None:
        await self._sweeper.stop()

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.delete_expired)
            except OSError as exc:
                logger.warning("could not sweep expired images: %s", exc)
            await asyncio.sleep(self._sweep_every)

    def _signature(self, name: str, expires: int) -> str:
        return hmac.new(self._key, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    def save(self, data: bytes, extension: str, request_id: str, base_url: str | None = None) -> str:
        """Write the image and return its signed absolute URL (under `base_url` when given). Off the loop."""
        name = f"{request_id}-{secrets.token_urlsafe(12)}.{extension}"
        expires = int(self.clock()) + self._ttl
        path = self.directory / name
        temporary = path.with_name(path.name + PARTIAL_SUFFIX)
        temporary.write_bytes(data)
        # The file's mtime records when the link expires, so the sweep needs no index. It is set before the
        # file appears under its name, so the sweep never sees a fresh image with a past mtime.
        os.utime(temporary, (expires, expires))
        os.replace(temporary, path)
        query = urlencode({"expires": expires, "sig": self._signature(name, expires)})
        return f"{(base_url or self._base_url).rstrip('/')}/v1/images/files/{name}?{query}"

    def open(self, name: str, expires: str | None, signature: str | None) -> tuple[Path, str]:
        """Check a signed link and return the file and its media type, or raise a 4xx."""
        if not _NAME.match(name):
            raise NotFound("No such image.", param="name")
        if not expires or not signature or not _EXPIRES.match(expires):
            raise LinkForbidden("This image link is not signed: `expires` and `sig` are required.")
        expected = self._signature(name, int(expires))
        if not hmac.compare_digest(expected.encode(), signature.encode()):  # bytes: any text may come in
            raise LinkForbidden("This image link's signature is not valid.")
        path = self.directory / name
        if int(expires) < self.clock():
            path.unlink(missing_ok=True)
            raise LinkExpired("This image link has expired; generate the image again.")
        if not path.is_file():
            raise NotFound("No such image (it may have expired and been deleted).")
        return path, MEDIA_TYPES[name.rsplit(".", 1)[1]]

    def delete_expired(self) -> int:
        """Delete files whose links have all expired; return how many."""
        now = self.clock()
        deleted = 0
        for path in self.directory.iterdir():
            # A file being written carries its expiry already; only one a crash left behind is removed.
            deadline = now - PARTIAL_GRACE_SECONDS if path.name.endswith(PARTIAL_SUFFIX) else now
            try:
                if path.is_file() and path.stat().st_mtime < deadline:
                    path.unlink()
                    deleted += 1
            except FileNotFoundError:
                continue
        if deleted:
            logger.info("deleted %d expired images", deleted)
        return deleted

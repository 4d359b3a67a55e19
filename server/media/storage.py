"""Generated images as files in a directory (the data dir by default), served through our signed links.

Links are `server.media.links` links (an HMAC and an expiry; no auth header needed). Expired files are deleted
by the store's own periodic sweep, which runs between `start()` and `stop()` (and when an expired link is
fetched). The signing key comes from the settings or is generated once and kept in the data dir (mode 0600),
so links survive a restart, and replicas sharing the directory and the key serve each other's links.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from server.errors import LinkExpired, NotFound, StorageUnavailable
from server.media.links import LinkSigner, media_type
from server.media.stored import StorageSetupError, StoredImage
from server.media.sweeping import SweepingStore
from server.secret_files import load_or_create_secret

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".part"
PARTIAL_GRACE_SECONDS = 3600  # a half-written file this old was left by a crash
SIGNING_KEY_FILENAME = "url_signing.key"


def load_or_create_signing_key(data_dir: Path, configured: str | None, file_name: str = SIGNING_KEY_FILENAME) -> bytes:
    """The configured URL signing key, else one generated once and kept in the data dir (mode 0600)."""
    return load_or_create_secret(data_dir, configured, file_name)


class FileImageStore(SweepingStore):
    def __init__(
        self,
        directory: Path,
        signer: LinkSigner,
        base_url: str,
        ttl_seconds: int,
        clock: Callable[[], float] = time.time,
        sweep_every: float = 60.0,
    ) -> None:
        self.directory = directory
        self._signer = signer
        self._base_url = base_url.rstrip("/")
        self._ttl = ttl_seconds
        self.clock = clock
        super().__init__(sweep_every)
        directory.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"files in {self.directory}"

    def check(self) -> None:
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise StorageSetupError(f"cannot write generated images to {self.directory} (IMAGESERVE_DATA_DIR or "
                                    "IMAGESERVE_STORAGE_URL)")

    def save(self, data: bytes, extension: str, request_id: str, base_url: str | None = None) -> str:
        """Write the image and return its signed absolute URL (under `base_url` when given). Off the loop."""
        name = f"{request_id}-{secrets.token_urlsafe(12)}.{extension}"
        expires = int(self.clock()) + self._ttl
        path = self.directory / name
        temporary = path.with_name(path.name + PARTIAL_SUFFIX)
        try:
            temporary.write_bytes(data)
            # The file's mtime records when the link expires, so the sweep needs no index. It is set before the
            # file appears under its name, so the sweep never sees a fresh image with a past mtime.
            os.utime(temporary, (expires, expires))
            os.replace(temporary, path)
        except OSError as exc:  # a full or read-only disk: the request fails cleanly, unbilled
            logger.error("%s: could not write an image to %s: %s", request_id, self.directory, exc.strerror or exc)
            temporary.unlink(missing_ok=True)
            raise StorageUnavailable("The server could not store the image; nothing was billed. Retry later, "
                                     "or ask for response_format=b64_json.") from None
        return self._signer.link(base_url or self._base_url, name, expires)

    def open(self, name: str, expires: str | None, signature: str | None) -> StoredImage:
        """Check a signed link and return the file, or raise a 4xx."""
        try:
            valid_until = self._signer.verify(name, expires, signature, self.clock())
        except LinkExpired:
            (self.directory / name).unlink(missing_ok=True)
            raise
        path = self.directory / name
        if not path.is_file():
            raise NotFound("No such image (it may have expired and been deleted).")
        # The file's mtime is its expiry (for the sweep); it was written one lifetime before that.
        return StoredImage(media_type(name), path=path, expires=valid_until, modified=path.stat().st_mtime - self._ttl)

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

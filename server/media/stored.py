"""What every image store is: the `ImageStore` protocol the service and the file route use, what `open`
returns, and the error that stops the server at start when a store cannot work.

Stores: `server.media.storage.FileImageStore` (the data dir, the default) and
`server.media.s3_store.S3ImageStore` (`IMAGESERVE_STORAGE_URL=s3://...`); `server.media.stores` picks one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class StorageSetupError(RuntimeError):
    """The configured store cannot work (no bucket, refused credentials, unreachable): one line, which setting."""


@dataclass(frozen=True)
class StoredImage:
    """An image behind one of our links: a file on disk, or a stream of chunks from object storage."""

    media_type: str
    path: Path | None = None
    chunks: Iterator[bytes] | None = None
    size: int | None = None
    expires: int | None = None  # when its link expires (unix seconds): no cache may keep it longer
    modified: float | None = None  # when it was stored


class ImageStore(Protocol):
    clock: Callable[[], float]  # the store's time (unix seconds): links expire by it

    def describe(self) -> str:
        """Where images go, for the start-up log."""
        ...

    async def start(self) -> None:
        """Check the store works (raising `StorageSetupError`), then sweep expired images until `stop()`."""
        ...

    async def stop(self) -> None: ...

    def check(self) -> None:
        """Raise `StorageSetupError` if images cannot be written and deleted; blocking."""
        ...

    def save(self, data: bytes, extension: str, request_id: str, base_url: str | None = None) -> str:
        """Store one image and return its link (absolute); blocking, so called off the event loop. Raises
        `StorageUnavailable` when the store does not answer."""
        ...

    def open(self, name: str, expires: str | None, signature: str | None) -> StoredImage:
        """The image behind one of our signed links, or a 4xx (`NotFound`, `LinkForbidden`, `LinkExpired`);
        blocking."""
        ...

    def delete_expired(self) -> int:
        """Delete images whose links have all expired; return how many. Blocking."""
        ...

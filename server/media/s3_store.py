"""Generated images in S3-compatible object storage (AWS S3, MinIO, Ceph RGW, SeaweedFS), through boto3.

`IMAGESERVE_STORAGE_URL=s3://<bucket>/<prefix>`. Each image is one object, `<prefix><request id>-<random>.<ext>`.
A `url` answer is, by default, a presigned GET link on the store itself, valid for `IMAGESERVE_URL_TTL_SECONDS`
(signed for `IMAGESERVE_S3_PUBLIC_ENDPOINT_URL` when clients reach the store under another address); the store
checks it, so any replica's link works without us. With `IMAGESERVE_S3_LINKS=proxy` the links are our own
signed links (`server.media.links`) and the server streams the object from the store, for stores clients
cannot reach. Objects whose links have all expired are deleted by a sweep that lists the prefix.

Every call to the store has bounded timeouts and runs off the event loop (the service's encoder threads, or
`asyncio.to_thread`). A store that is slow or down is a 503 with `Retry-After` (`StorageUnavailable`): the
images are not billed and the server stays up. At start, `check()` proves the bucket exists and that we can
write and delete in it, or says in one line which setting is wrong; credentials are never printed.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from server.errors import NotFound, StorageUnavailable
from server.media.links import MEDIA_TYPES, LinkSigner, media_type
from server.media.stored import StorageSetupError, StoredImage
from server.media.sweeping import SweepingStore

logger = logging.getLogger(__name__)

SWEEP_GRACE_SECONDS = 60  # clocks of the store and the server may differ a little
DELETE_BATCH = 1000  # S3's limit per DeleteObjects call


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """`s3://bucket` or `s3://bucket/some/prefix` (bucket names as S3 allows them)."""
        rest = url.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        prefix = prefix.strip("/")
        return cls(bucket, f"{prefix}/" if prefix else "")


def _error_code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")


class S3ImageStore(SweepingStore):
    sweep_errors = (BotoCoreError, ClientError)

    def __init__(self, location: S3Location, client: Any, presign_client: Any, signer: LinkSigner, base_url: str,
                 ttl_seconds: int, *, proxy_links: bool, endpoint: str, clock: Callable[[], float] = time.time,
                 sweep_every: float = 60.0) -> None:
        self.location = location
        self._client = client  # boto3 S3 clients are thread-safe
        self._presign_client = presign_client  # the same, or one for the address clients use
        self._signer = signer
        self._base_url = base_url.rstrip("/")
        self._ttl = ttl_seconds
        self.proxy_links = proxy_links
        self._endpoint = endpoint  # for messages: the store's address (never a credential)
        self.clock = clock
        super().__init__(sweep_every)

    def describe(self) -> str:
        links = "proxied through the server" if self.proxy_links else "presigned on the store"
        return f"s3://{self.location.bucket}/{self.location.prefix} at {self._endpoint} (links {links})"

    def check(self) -> None:
        """The bucket exists and we can write and delete there; else `StorageSetupError` naming the setting."""
        bucket, where = self.location.bucket, self._endpoint
        probe = f"{self.location.prefix}.imageserve-probe-{secrets.token_hex(8)}"
        step = "find"
        try:
            self._client.head_bucket(Bucket=bucket)
            step = "write to"
            self._client.put_object(Bucket=bucket, Key=probe, Body=b"probe")
            step = "delete in"
            self._client.delete_object(Bucket=bucket, Key=probe)
        except NoCredentialsError:
            raise StorageSetupError("IMAGESERVE_STORAGE_URL is an s3:// URL but no S3 credentials were found: set "
                                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use an instance "
                                    "role") from None
        except ClientError as exc:
            code = _error_code(exc)
            if step == "find" and code in ("404", "NoSuchBucket", "NotFound"):
                raise StorageSetupError(f"IMAGESERVE_STORAGE_URL: bucket '{bucket}' does not exist at {where}; "
                                        "create it first") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
                raise StorageSetupError(f"the object store at {where} refused the S3 credentials (AWS_ACCESS_KEY_ID "
                                        f"/ AWS_SECRET_ACCESS_KEY or the credential chain) to {step} bucket "
                                        f"'{bucket}'") from None
            raise StorageSetupError(f"cannot {step} bucket '{bucket}' at {where}: {code}") from None
        except BotoCoreError as exc:
            raise StorageSetupError(f"cannot reach the object store at {where} (IMAGESERVE_S3_ENDPOINT_URL): "
                                    f"{type(exc).__name__}") from None

    # --- images ------------------------------------------------------------------------------------

    def save(self, data: bytes, extension: str, request_id: str, base_url: str | None = None) -> str:
        """Upload the image and return its link. On an encoder thread, never on the event loop."""
        name = f"{request_id}-{secrets.token_urlsafe(12)}.{extension}"
        key = self.location.prefix + name
        expires = int(self.clock()) + self._ttl
        try:
            self._client.put_object(Bucket=self.location.bucket, Key=key, Body=data, ContentType=MEDIA_TYPES[extension],
                                    CacheControl=f"private, max-age={min(self._ttl, 300)}")
        except (BotoCoreError, ClientError) as exc:
            logger.warning("%s: could not store an image in %s: %s", request_id, self.describe(),
                           _error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__)
            raise StorageUnavailable("The image store is not answering; nothing was billed. Retry in a few "
                                     "seconds.") from None
        if self.proxy_links:
            return self._signer.link(base_url or self._base_url, name, expires)
        return self._presign_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.location.bucket, "Key": key}, ExpiresIn=self._ttl)

    def open(self, name: str, expires: str | None, signature: str | None) -> StoredImage:
        """Proxy mode: check our signed link, then stream the object from the store."""
        valid_until = self._signer.verify(name, expires, signature, self.clock())
        try:
            found = self._client.get_object(Bucket=self.location.bucket, Key=self.location.prefix + name)
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise NotFound("No such image (it may have expired and been deleted).") from None
            raise StorageUnavailable("The image store is not answering. Retry in a few seconds.") from None
        except BotoCoreError:
            raise StorageUnavailable("The image store is not answering. Retry in a few seconds.") from None
        stored_at = found.get("LastModified")
        return StoredImage(media_type(name), chunks=_chunks(found["Body"]), size=found.get("ContentLength"),
                           expires=valid_until, modified=stored_at.timestamp() if stored_at else None)

    def delete_expired(self) -> int:
        """Delete the objects under the prefix whose links have all expired; return how many."""
        cutoff = self.clock() - self._ttl - SWEEP_GRACE_SECONDS
        expired: list[dict[str, str]] = []
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket,
                                                                       Prefix=self.location.prefix)
        for page in pages:
            for item in page.get("Contents", []):
                if item["LastModified"].timestamp() < cutoff and not item["Key"].endswith("/"):
                    expired.append({"Key": item["Key"]})
        for start in range(0, len(expired), DELETE_BATCH):
            self._client.delete_objects(Bucket=self.location.bucket,
                                        Delete={"Objects": expired[start:start + DELETE_BATCH], "Quiet": True})
        if expired:
            logger.info("deleted %d expired images from %s", len(expired), self.describe())
        return len(expired)


def _chunks(body: Any, size: int = 64 * 1024) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(size)
    finally:
        body.close()

"""Which image store the settings ask for: the data dir (`file://`, the default) or S3 (`s3://`).

boto3 is imported only for `s3://`. Its clients get bounded timeouts and few retries, so a store that is
down costs a request seconds, not minutes; path-style addressing when an endpoint is given (MinIO, Ceph
RGW, SeaweedFS), the store's default otherwise. Credentials come from boto3's standard chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from server.media.links import LinkSigner
from server.media.storage import FileImageStore
from server.media.stored import ImageStore
from server.settings import Settings

S3_CONNECT_TIMEOUT_S = 3
S3_READ_TIMEOUT_S = 15
S3_ATTEMPTS = 2  # one retry


def storage_location(settings: Settings) -> tuple[str, str]:
    """("file", directory) or ("s3", url), from IMAGESERVE_STORAGE_URL (default: the data dir's images/)."""
    url = settings.storage_url
    if not url:
        return "file", str(settings.data_dir / "images")
    if url.startswith("file://"):
        return "file", url.removeprefix("file://")
    return "s3", url


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl() \
        if parts.hostname else url


def _s3_clients(settings: Settings) -> tuple[Any, Any]:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=settings.s3_region)
    region = session.region_name or "us-east-1"
    addressing = "path" if settings.s3_endpoint_url else "auto"
    config = Config(signature_version="s3v4", s3={"addressing_style": addressing},
                    connect_timeout=S3_CONNECT_TIMEOUT_S, read_timeout=S3_READ_TIMEOUT_S,
                    retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"}, max_pool_connections=32)
    client = session.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=region, config=config)
    public = settings.s3_public_endpoint_url
    presign = client if not public else session.client("s3", endpoint_url=public, region_name=region, config=config)
    return client, presign


def build_image_store(settings: Settings, signing_key: bytes) -> ImageStore:
    kind, where = storage_location(settings)
    signer = LinkSigner(signing_key)
    if kind == "file":
        return FileImageStore(Path(where), signer, settings.base_url, settings.url_ttl_seconds,
                              sweep_every=settings.cleanup_interval_seconds)
    from server.media.s3_store import S3ImageStore, S3Location

    client, presign = _s3_clients(settings)
    endpoint = _without_userinfo(settings.s3_endpoint_url or "the default AWS S3 endpoint")
    return S3ImageStore(S3Location.parse(where), client, presign, signer, settings.base_url,
                        settings.url_ttl_seconds, proxy_links=settings.s3_links == "proxy", endpoint=endpoint,
                        sweep_every=settings.cleanup_interval_seconds)

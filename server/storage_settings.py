"""The image store's settings (`IMAGESERVE_STORAGE_URL` and the `IMAGESERVE_S3_*` family), a part of `Settings`.

S3 credentials are not settings: boto3's standard chain finds them (`AWS_ACCESS_KEY_ID` and
`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, instance roles), so they never pass through ours.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, field_validator

from server.url_checks import check_http_url

# S3 bucket names: 3-63 lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_storage_url(value: str) -> str:
    if value.startswith("file://"):
        if not value.removeprefix("file://"):
            raise ValueError("storage_url: file:// needs a directory, e.g. file:///var/lib/imageserve/images")
        return value
    if value.startswith("s3://"):
        bucket = value.removeprefix("s3://").partition("/")[0]
        if not _BUCKET.match(bucket):
            raise ValueError("storage_url: s3://<bucket>/<prefix> needs a valid bucket name (3-63 lower-case "
                             "letters, digits, dots and hyphens)")
        return value
    raise ValueError("storage_url must be file://<directory> or s3://<bucket>/<prefix>")


class StorageSettings(BaseModel):
    """Where generated images go. Default: files in the data dir, served by this server."""

    storage_url: str | None = None  # file://<dir> or s3://<bucket>/<prefix>; default file://<data_dir>/images
    s3_endpoint_url: str | None = None  # an S3-compatible store (MinIO, Ceph RGW, SeaweedFS); default AWS
    s3_public_endpoint_url: str | None = None  # where clients reach the store, if not at s3_endpoint_url
    s3_region: str | None = None  # default: AWS_REGION / AWS_DEFAULT_REGION / the profile, else us-east-1
    # presign: links are presigned GETs on the store; proxy: our own signed links, the server streams the object.
    s3_links: Literal["presign", "proxy"] = "presign"

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str | None) -> str | None:
        return None if value is None else check_storage_url(value)

    @field_validator("s3_endpoint_url", "s3_public_endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value, "s3 endpoint")

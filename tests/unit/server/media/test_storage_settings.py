"""IMAGESERVE_STORAGE_URL and the S3 settings: what is accepted, and which store each one gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.media.s3_store import S3ImageStore, S3Location
from server.media.storage import FileImageStore
from server.media.stores import build_image_store, storage_location
from server.settings import load_settings


@pytest.mark.parametrize(("url", "bucket", "prefix"), [
    ("s3://images", "images", ""),
    ("s3://images/", "images", ""),
    ("s3://my.bucket-1/generated/2026", "my.bucket-1", "generated/2026/"),
])
def test_s3_urls_name_a_bucket_and_a_prefix(url: str, bucket: str, prefix: str) -> None:
    assert S3Location.parse(url) == S3Location(bucket, prefix)
    assert load_settings(storage_url=url).storage_url == url


@pytest.mark.parametrize("url", ["s3://Bad_Bucket/x", "s3://ab", "s3://", "file://", "http://bucket/x", "/tmp/x"])
def test_storage_urls_that_cannot_work_are_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(ValidationError, match="storage_url"):
        load_settings(storage_url=url)


def test_endpoints_must_be_http_urls() -> None:
    with pytest.raises(ValidationError, match="s3 endpoint"):
        load_settings(s3_endpoint_url="localhost:9000")
    with pytest.raises(ValidationError, match="s3_links"):
        load_settings(s3_links="public")


def test_the_default_is_files_in_the_data_dir_and_s3_urls_give_the_s3_store(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert storage_location(settings) == ("file", str(tmp_path / "images"))
    assert isinstance(build_image_store(settings, b"k" * 32), FileImageStore)
    other = load_settings(data_dir=tmp_path, storage_url=f"file://{tmp_path / 'elsewhere'}")
    store = build_image_store(other, b"k" * 32)
    assert isinstance(store, FileImageStore) and store.directory == tmp_path / "elsewhere"
    s3 = build_image_store(load_settings(data_dir=tmp_path, storage_url="s3://images/gen", s3_links="proxy",
                                         s3_endpoint_url="http://user:pw@127.0.0.1:9"), b"k" * 32)
    assert isinstance(s3, S3ImageStore) and s3.proxy_links and s3.location == S3Location("images", "gen/")
    assert "pw" not in s3.describe() and "127.0.0.1:9" in s3.describe()  # no credentials in logs

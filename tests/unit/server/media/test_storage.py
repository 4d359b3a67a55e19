"""FileImageStore and the signing key, directly: races and odd links that HTTP tests cannot time."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from pipelines.errors import ImageServeError
from server.api.errors import status_of
from server.media.links import LinkSigner
from server.media.storage import FileImageStore, load_or_create_signing_key

NOW = 1_800_000_000.0


def _store(tmp_path: Path) -> FileImageStore:
    return FileImageStore(tmp_path / "images", LinkSigner(b"k" * 32), "http://127.0.0.1:8000", 3600, clock=lambda: NOW)


def _parts(url: str) -> tuple[str, str, str]:
    parsed = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    return parsed.path.rsplit("/", 1)[1], query["expires"], query["sig"]


def test_a_link_is_valid_for_the_configured_lifetime(tmp_path: Path) -> None:
    store = _store(tmp_path)
    name, expires, sig = _parts(store.save(b"png bytes", "png", "req_img_abc"))
    assert int(expires) == NOW + 3600
    stored = store.open(name, expires, sig)
    assert stored.path.read_bytes() == b"png bytes" and stored.media_type == "image/png"


@pytest.mark.parametrize(("part", "value"), [
    *(("expires", value) for value in ["²", "1" * 5000, "-5", "1e9", " 1", ""]),
    *(("sig", value) for value in ["\u00e9", "\u00e9" * 64, "not-hex", ""]),
])
def test_odd_link_parts_are_refused_not_crashed_on(tmp_path: Path, part: str, value: str) -> None:
    store = _store(tmp_path)
    name, expires, sig = _parts(store.save(b"x", "png", "req_img_abc"))
    link = {"expires": expires, "sig": sig, part: value}
    with pytest.raises(ImageServeError) as refused:
        store.open(name, link["expires"], link["sig"])
    assert status_of(refused.value) == 403


def test_the_sweep_never_deletes_an_image_being_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    real_replace = os.replace
    swept: list[int] = []

    def replace_with_a_sweep_in_between(source, target):  # the periodic sweep runs mid-save
        swept.append(store.delete_expired())
        real_replace(source, target)
        swept.append(store.delete_expired())

    monkeypatch.setattr("server.media.storage.os.replace", replace_with_a_sweep_in_between)
    url = store.save(b"png bytes", "png", "req_img_abc")
    assert swept == [0, 0]
    name, expires, sig = _parts(url)
    assert store.open(name, expires, sig).path.exists()


def test_the_sweep_removes_expired_images_and_old_partial_files(tmp_path: Path) -> None:
    store = _store(tmp_path)
    name, _, _ = _parts(store.save(b"x", "png", "req_img_abc"))
    leftover = store.directory / "req_img_crash-xxxxxxxx.png.part"
    leftover.write_bytes(b"half")
    os.utime(leftover, (NOW - 7200, NOW - 7200))
    assert store.delete_expired() == 1  # only the crash leftover: the image is still valid
    store.clock = lambda: NOW + 3601
    assert store.delete_expired() == 1 and not (store.directory / name).exists()


def test_replicas_starting_together_agree_on_one_signing_key(tmp_path: Path) -> None:
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_signing_key(tmp_path, None)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    assert (tmp_path / "url_signing.key").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["url_signing.key"]


def test_an_empty_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "url_signing.key").write_bytes(b"")
    with pytest.raises(ValueError, match="no usable secret"):
        load_or_create_signing_key(tmp_path, None)

"""Narrow settings: the pepper from a data dir and a configured value, the database URL from the same."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from server.accounts.credentials import KEY_PEPPER_FILENAME, load_key_pepper
from server.accounts.database import DB_FILENAME, resolve_url
from server.redaction import redact


def test_the_pepper_is_configured_or_made_once(tmp_path: Path) -> None:
    assert load_key_pepper(tmp_path, "shared") == b"shared"
    assert not (tmp_path / KEY_PEPPER_FILENAME).exists()
    made = load_key_pepper(tmp_path, None)
    assert load_key_pepper(tmp_path, None) == made and len(made) == 32
    assert stat.S_IMODE((tmp_path / KEY_PEPPER_FILENAME).stat().st_mode) == 0o600
    (tmp_path / KEY_PEPPER_FILENAME).write_bytes(b"short")
    with pytest.raises(ValueError, match="no usable secret"):
        load_key_pepper(tmp_path, None)


def test_the_database_url_is_configured_or_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    assert resolve_url(None, tmp_path) == f"sqlite:///{(tmp_path / DB_FILENAME).resolve()}"
    assert resolve_url("  ", tmp_path) == f"sqlite:///{(tmp_path / DB_FILENAME).resolve()}"
    assert resolve_url(" postgresql://u:p@h/db ", tmp_path) == "postgresql+psycopg://u:p@h/db"


def test_redact_masks_the_longest_secret_first_and_ignores_empty_ones() -> None:
    assert redact("pw=abc123 and abc", {"abc", "abc123", ""}) == "pw=*** and ***"
    assert redact("nothing", []) == "nothing"

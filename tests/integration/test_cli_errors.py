"""Bad input to the `imageserve` command, as found by fuzzing: one `error:` line naming what is wrong, exit
code 2, no traceback, and never a database password."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from server.accounts.database import mask_url
from server.app import create_app
from server.cli.main import main
from server.settings import load_settings
from tests.support.constants import REPO_ROOT

ROOT = REPO_ROOT
UNREACHABLE = "postgresql://user:PwSecret6@127.0.0.1:1/db?sslmode=disable&password=PwSecret9"
UNREACHABLE_SHOWN = "postgresql+psycopg://user:***@127.0.0.1:1/db?sslmode=disable&password=***"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def run_cli(tmp_path: Path, *argv: str, env: dict[str, str] | None = None,
            prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """The real command in its own process (for `serve`, whose success would block)."""
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
                   "IMAGESERVE_DATA_DIR": str(tmp_path / "data"), **(env or {})}
    return subprocess.run([*prefix, sys.executable, "-m", "server.cli.main", *argv], capture_output=True, text=True,
                          timeout=120, env=environment, cwd=ROOT)


def assert_clear(stderr: str, expected: list[str], hidden: list[str]) -> None:
    assert "Traceback" not in stderr
    problem = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(problem) == 1, stderr
    for text in expected:
        assert text in problem[0]
    for secret in hidden:
        assert secret not in stderr


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://user@h:1/db?password=PwSecret9", "postgresql+psycopg://user@h:1/db?password=***"),
    ("postgresql+psycopg://u@h/db?a=1&PASSWORD=Pw9&sslpassword=Pw8", "postgresql+psycopg://u@h/db?a=1&PASSWORD=***&sslpassword=***"),
    ("postgresql+psycopg://user:PwSe@cret7@127.0.0.1:1/db", "postgresql+psycopg://user:***@127.0.0.1:1/db"),
    ("postgresql+psycopg://u:p?ss/w@h/db?x=a@b", "postgresql+psycopg://u:***@h/db?x=a@b"),
    ("postgresql+psycopg://user@corp:Pw@h:5432/db", "postgresql+psycopg://user@corp:***@h:5432/db"),
    ("sqlite:////srv/data/imageserve.db", "sqlite:////srv/data/imageserve.db"),
    ("not a url PwSecret", "(not a URL)"),
])
def test_masked_urls_hide_every_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown


BAD_URLS = [
    ("not a url", ["IMAGESERVE_DATABASE_URL is not a database URL", "postgresql://"], ["not a url"]),
    ("mysql://u:PwMy5ql@h/db", ["IMAGESERVE_DATABASE_URL", "unsupported database 'mysql'", "sqlite:///"],
     ["PwMy5ql"]),
    ("postgresql+psycopg2://u:PwDrv@h/db", ["IMAGESERVE_DATABASE_URL", "psycopg2", "not installed"], ["PwDrv"]),
    ("postgresql://u:PwP0rt@localhost:abc/db", ["IMAGESERVE_DATABASE_URL", "port must be a number"], ["PwP0rt"]),
    ("postgresql://user:PwSe@cret7@127.0.0.1:1/db", ["IMAGESERVE_DATABASE_URL", "user:***@127.0.0.1:1/db", "%40"],
     ["PwSe", "cret7"]),
]


@pytest.mark.parametrize(("url", "expected", "hidden"), BAD_URLS)
def test_a_bad_database_url_is_one_line_naming_the_setting(url: str, expected: list[str], hidden: list[str],
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMAGESERVE_DATABASE_URL", url)
    monkeypatch.setenv("IMAGESERVE_DATA_DIR", str(tmp_path))
    for command in (["keys", "list"], ["keys", "create", "--tier", "pro"], ["usage"]):
        code, err = cli(capsys, *command)
        assert code == 2, command
        assert_clear(err, expected, hidden)
    served = run_cli(tmp_path, "serve", "--port", "0", env={"IMAGESERVE_DATABASE_URL": url})
    assert served.returncode == 2
    assert_clear(served.stderr, expected, hidden)


def test_an_unreachable_database_is_one_masked_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMAGESERVE_DATABASE_URL", UNREACHABLE)
    code, err = cli(capsys, "keys", "list")
    assert code == 1
    assert_clear(err, [f"error: database {UNREACHABLE_SHOWN}: OperationalError"], ["PwSecret"])
    # With IMAGESERVE_API_KEYS the exposure check needs no database; `serve` must still check it first.
    for keys in ("", "k-0123456789:pro"):
        served = run_cli(tmp_path, "serve", "--port", "0",
                         env={"IMAGESERVE_DATABASE_URL": UNREACHABLE, "IMAGESERVE_API_KEYS": keys})
        assert served.returncode == 2
        assert_clear(served.stderr, [f"cannot open the database {UNREACHABLE_SHOWN}"], ["PwSecret"])


def test_the_app_says_why_its_startup_failed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(data_dir=tmp_path, database_url=UNREACHABLE, api_keys="k-0123456789:pro")
    app = create_app(settings)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with caplog.at_level(logging.ERROR, logger="server.app"), pytest.raises(OperationalError):
        asyncio.run(start())
    assert f"cannot start: database {UNREACHABLE_SHOWN}: OperationalError" in caplog.text
    assert "PwSecret" not in caplog.text


@pytest.mark.parametrize("option", ["--images-per-minute", "--images-per-day"])
@pytest.mark.parametrize("value", [str(2**63), "99999999999999999999", "1000000001", "ten"])
def test_key_limits_are_bounded(option: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMAGESERVE_DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", "--tier", "pro", option, value])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    assert f"argument {option}: must be" in err


def test_the_largest_key_limit_is_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMAGESERVE_DATA_DIR", str(tmp_path))
    assert main(["keys", "create", "--tier", "pro", "--name", "big", "--images-per-day", "1000000000"]) == 0
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert next(line for line in listed.splitlines() if line.startswith("big")).split()[1:4] == [
        "pro", "30", "1000000000"]


def test_a_file_where_a_folder_belongs_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    monkeypatch.setenv("IMAGESERVE_DATA_DIR", str(a_file))
    code, err = cli(capsys, "keys", "list")
    assert code == 2
    assert_clear(err, [f"error: {a_file} exists and is not a directory"], [])
    monkeypatch.setenv("IMAGESERVE_DATA_DIR", str(a_file / "sub"))
    code, err = cli(capsys, "keys", "list")
    assert code == 2
    assert_clear(err, [f"error: {a_file / 'sub'}: part of this path is a file"], [])
    monkeypatch.setenv("IMAGESERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGESERVE_MODEL_CACHE", str(a_file))
    code, err = cli(capsys, "pull", "tiny-flux")
    assert code == 2
    assert_clear(err, [f"error: {a_file / 'tiny'}: part of this path is a file"], [])
    code, err = cli(capsys, "bench", "--model", "tiny-flux", "--base-url", "http://127.0.0.1:1/v1", "--requests",
                    "1", "--concurrency", "1", "--no-progress", "--out", str(a_file))
    assert code == 2
    assert_clear(err, [f"error: {a_file} exists and is not a directory"], [])
    served = run_cli(tmp_path, "serve", "--port", "0", env={"IMAGESERVE_DATA_DIR": str(a_file)})
    assert served.returncode == 2
    assert_clear(served.stderr, [f"error: {a_file} exists and is not a directory"], [])


def test_a_config_that_is_a_folder_or_unreadable_is_one_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli(capsys, "--config", str(tmp_path), "models")
    assert code == 2
    assert_clear(err, [f"error: --config {tmp_path} is a directory"], [])

    config = tmp_path / "imageserve.toml"
    config.write_text("port = 8001\n")
    config.chmod(0)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that let it
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        prefix = (setpriv, "--bounding-set=-dac_override,-dac_read_search")
    completed = run_cli(tmp_path, "--config", str(config), "models", prefix=prefix)
    assert completed.returncode == 2
    assert_clear(completed.stderr, [f"error: Permission denied: {config}"], [])


def test_pull_without_a_source_says_to_set_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMAGESERVE_MODEL_CACHE", str(tmp_path / "cache"))
    local = tmp_path / "weights"
    local.mkdir()
    config = tmp_path / "imageserve.toml"
    config.write_text(f'[models.mine]\nkind = "sd3"\n[models.local]\nkind = "sd3"\nsource = "{local}"\n')
    code, err = cli(capsys, "--config", str(config), "pull", "mine")
    assert code == 2
    assert_clear(err, ["error: model 'mine'", "no `source`", "[models.mine]", "hub repo id", "local folder"], [])
    assert main(["--config", str(config), "pull", "local"]) == 0
    assert "nothing to download" in capsys.readouterr().out

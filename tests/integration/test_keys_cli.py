"""`imageserve keys create|list|revoke` and `imageserve usage`, against a running server's database."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from server.accounts.database import DB_FILENAME, Database
from server.accounts.keys import KeyStore
from server.accounts.ledger import UsageLedger
from server.accounts.setup import database_url
from server.cli.main import main
from server.settings import load_settings
from tests.support.pg_harness import postgres
from tests.support.server_harness import running_server
from tests.support.usage_fixtures import FakeClock, request, settle_ok


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMAGESERVE_DATA_DIR", str(tmp_path))
    return tmp_path


def test_keys_create_list_revoke_with_a_running_server(data_dir: Path, model_cache: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "keys", "create", "--tier", "pro", "--name", "team-a")
    assert code == 0 and (data_dir / DB_FILENAME).is_file()
    key = out.strip()
    assert key.startswith("isk_") and "\n" not in key  # the key alone on stdout
    assert "team-a" in err and "only time" in err
    code, out, _ = cli(capsys, "keys", "create", "--tier", "free", "--images-per-minute", "2",
                       "--images-per-day", "0")
    assert code == 0

    code, out, _ = cli(capsys, "keys", "list")
    assert code == 0 and key not in out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "TIER"]
    team = next(line for line in lines if line.startswith("team-a"))
    assert team.split()[1:4] == ["pro", "30", "1000"] and "active" in team
    custom = next(line for line in lines if line.startswith("key-"))
    assert custom.split()[1:4] == ["free", "2", "unlimited"]

    with running_server(data_dir=data_dir, model_cache=model_cache) as server:
        models = server.api_url + "/models"
        assert httpx.get(models, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.get(server.api_url + "/usage", headers={"Authorization": f"Bearer {key}"}).json()["key"] == {
            "name": "team-a", "tier": "pro"}
        code, out, _ = cli(capsys, "keys", "revoke", "team-a")
        assert code == 0 and "revoked" in out
        refused = httpx.get(models, headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]

    code, out, _ = cli(capsys, "keys", "list")
    assert "revoked" in next(line for line in out.splitlines() if line.startswith("team-a"))
    code, out, _ = cli(capsys, "usage")
    assert code == 0 and "TOTAL" in out and "usage from" in out


def test_keys_cli_errors(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "keys", "create", "--tier", "gold")[0] == 2
    assert cli(capsys, "keys", "create", "--tier", "free", "--name", "dup")[0] == 0
    code, _, err = cli(capsys, "keys", "create", "--tier", "free", "--name", "dup")
    assert code == 2 and "already exists" in err
    code, _, err = cli(capsys, "keys", "revoke", "nobody")
    assert code == 2 and "no key named" in err
    code, _, err = cli(capsys, "usage", "--start", "last-week")
    assert code == 2 and "start" in err
    with pytest.raises(SystemExit):
        main(["keys", "create", "--tier", "free", "--images-per-day", "-1"])
    capsys.readouterr()


def test_tiers_from_the_config_file(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "imageserve.toml"
    config.write_text("[tiers.team]\nimages_per_minute = 12\nimages_per_day = 345\n")
    assert cli(capsys, "--config", str(config), "keys", "create", "--tier", "team", "--name", "t")[0] == 0
    code, out, _ = cli(capsys, "keys", "list", "--config", str(config))
    assert next(line for line in out.splitlines() if line.startswith("t ")).split()[1:4] == ["team", "12", "345"]


def test_keys_cli_on_postgresql(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    url = postgres().create_database()
    monkeypatch.setenv("IMAGESERVE_DATABASE_URL", url)
    monkeypatch.setenv("IMAGESERVE_DATA_DIR", str(tmp_path))
    code, out, _ = cli(capsys, "keys", "create", "--tier", "enterprise", "--name", "pg-team")
    assert code == 0 and out.startswith("isk_")
    code, out, _ = cli(capsys, "keys", "list")
    assert "pg-team" in out and "enterprise" in out
    assert not (tmp_path / DB_FILENAME).exists()  # nothing went to SQLite


def test_postgresql_url_with_an_encoded_at_and_a_query(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A percent-encoded `@` in the password and query parameters pass the URL checks (the test server
    trusts every local connection, so the password itself is not checked)."""
    url = postgres().create_database().replace("postgresql://postgres@", "postgresql://postgres:Pw%40Secret@")
    monkeypatch.setenv("IMAGESERVE_DATABASE_URL", url + "?application_name=imageserve-test")
    monkeypatch.setenv("IMAGESERVE_DATA_DIR", str(tmp_path))
    code, out, err = cli(capsys, "keys", "create", "--tier", "free", "--name", "encoded")
    assert code == 0 and out.startswith("isk_")
    code, out, _ = cli(capsys, "keys", "list")
    assert code == 0 and "encoded" in out and "Secret" not in out + err


def test_unreachable_database_is_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMAGESERVE_DATABASE_URL", "postgresql://nobody:secret@127.0.0.1:1/none")
    code, _, err = cli(capsys, "keys", "list")
    assert code == 1 and "error: database" in err and "secret" not in err


def test_usage_prints_totals_per_model_and_per_day(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    database = Database(database_url(load_settings()))
    try:
        ledger = UsageLedger(database, load_settings().tiers, clock=clock)
        alice = KeyStore(database, clock=clock).create("pro", "alice")[1].principal()
        for n, model in ((2, "tiny-flux"), (1, "dall-e-2")):
            req = request(n, model)
            ledger.admit_sync(alice, req)
            settle_ok(ledger, alice, req, cost=0.02 * n)
            clock.advance(86_400)  # the next request is on the next UTC day
    finally:
        database.dispose()
    code, out, _ = cli(capsys, "usage", "--start", "2026-11-20", "--end", "2026-11-21")
    assert code == 0
    model_table, day_table = out.split("\n\n")
    assert "MODEL" in model_table and "DAY" in day_table
    days = {line.split()[2]: line.split()[3:] for line in day_table.splitlines() if line.startswith("alice")}
    assert days == {"2026-11-20": ["1", "2", "0.0400"], "2026-11-21": ["1", "1", "0.0200"]}
    assert day_table.splitlines()[-1].split() == ["TOTAL", "2", "3", "0.0600"]
    code, out, _ = cli(capsys, "usage", "--start", "2026-11-20", "--end", "2026-11-21", "--by", "day")
    assert code == 0 and "MODEL" not in out and "2026-11-21" in out

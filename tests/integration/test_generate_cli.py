"""`imageserve generate` against a real server: files written at the asked size, the perf block printed, and
one clear line for a refused request or a server that is not there."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from PIL import Image

from server.cli.main import main
from tests.support.constants import TEST_KEY


def test_generate_writes_each_image_and_prints_perf(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMAGESERVE_API_KEY", TEST_KEY)
    out = tmp_path / "fox.png"
    assert main(["generate", "a fox", "--model", "tiny-flux", "--size", "256x256", "--n", "2", "--seed", "3",
                 "--out", str(out), "--base-url", server.api_url]) == 0
    captured = capsys.readouterr()
    perf = json.loads(captured.out)
    assert perf["model_used"] == "tiny-flux" and perf["size"] == "256x256"
    written = [tmp_path / "fox-1.png", tmp_path / "fox-2.png"]
    assert all(Image.open(path).size == (256, 256) for path in written)
    assert f"wrote {written[0]}" in captured.err


def test_errors_are_one_line(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMAGESERVE_API_KEY", TEST_KEY)
    assert main(["generate", "a fox", "--model", "tiny-flux", "--size", "10x10", "--base-url", server.api_url,
                 "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 400") and "size" in err and "\n" not in err
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert main(["generate", "a fox", "--base-url", f"http://127.0.0.1:{closed}/v1", "--timeout", "5"]) == 1
    assert "cannot reach the server" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()

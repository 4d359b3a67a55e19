"""The CLI's shared pieces: settings from the command line and the one table printer."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from server.cli.common import print_table, settings_from_args


def test_the_table_pads_every_column_but_the_last(capsys: pytest.CaptureFixture[str]) -> None:
    print_table([["NAME", "N", "DETAIL"], ["alice", 10, "a b"], ["TOTAL", "", ""]])
    assert capsys.readouterr().out.splitlines() == [
        "NAME   N   DETAIL",
        "alice  10  a b",
        "TOTAL      ",
    ]


def test_settings_take_host_and_port_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "imageserve.toml"
    config.write_text('host = "0.0.0.0"\nport = 9000\n')
    assert settings_from_args(argparse.Namespace(config=config)).port == 9000
    settings = settings_from_args(argparse.Namespace(config=config, host="127.0.0.1", port=None))
    assert (settings.host, settings.port) == ("127.0.0.1", 9000)
    with pytest.raises(ValueError, match="is a directory"):
        settings_from_args(argparse.Namespace(config=tmp_path))

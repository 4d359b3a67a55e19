"""`imageserve bench` against a real local server: JSON, Markdown and (with matplotlib) a PNG."""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai.types import Image

from server.cli.bench import PriceTable, add_bench_command, answer_shape, build_targets, request_arguments
from server.cli.bench_chart import CHART_SKIPPED
from server.cli.bench_report import BenchOptions, RequestRecord, percentile, summarize
from server.cli.main import main
from tests.support.emulators.common import EmulatorServer, png
from tests.support.emulators.openai_api import OpenAIEmulator
from tests.support.server_harness import running_server

SIM = {"kind": "simulated", "time_scale": 0.002, "default_steps": 4, "custom_sizes": True, "price_usd": 0.003}
OPENAI_KEY = "sk-bench-test-SECRET-4f9a21"


@pytest.fixture(scope="module")
def _openai_server() -> Iterator[OpenAIEmulator]:
    with EmulatorServer(OpenAIEmulator(OPENAI_KEY)) as running:
        yield running  # type: ignore[misc]


@pytest.fixture
def openai_api(_openai_server: OpenAIEmulator) -> OpenAIEmulator:
    """The loopback OpenAI Images emulator (it checks parameters per model family as OpenAI does)."""
    _openai_server.reset()
    return _openai_server


def bench(emu: OpenAIEmulator, out: Path, *flags: str, key: str = OPENAI_KEY) -> int:
    return main(["bench", "--base-url", f"{emu.base_url}/v1", "--api-key", key, "--requests", "2",
                 "--concurrency", "2", "--out", str(out), "--no-progress", *flags])


def test_percentile_and_summary() -> None:
    assert percentile([], 50) is None
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    records = [RequestRecord("t", i, 0.0, 1.0 + i, True, images=2, cost_usd=0.01) for i in range(3)]
    records.append(RequestRecord("t", 3, 0.0, 0.1, False, error="HTTP 500: boom"))
    summary = summarize(records, wall_s=2.0)
    assert (summary["ok"], summary["errors"], summary["images"]) == (3, 1, 6)
    assert summary["images_per_s"] == pytest.approx(3.0)
    assert summary["cost_usd_per_image"] == pytest.approx(0.005)
    assert summary["first_error"] == "HTTP 500: boom"


def test_targets_cross_models_and_endpoints_and_pin_with_at() -> None:
    targets = build_targets(["a", "b@http://h2/v1"], ["http://h1/v1", "http://h3/v1"], ["k1", "k3", "k2"])
    assert [(t.model, t.base_url, t.api_key) for t in targets] == [
        ("a", "http://h1/v1", "k1"), ("a", "http://h3/v1", "k3"), ("b", "http://h2/v1", "k2")]


def test_keys_pair_with_pinned_endpoints_and_one_key_never_goes_to_two_hosts(monkeypatch) -> None:
    # The README's local-against-hosted comparison: no --base-url, two pinned endpoints, two keys.
    targets = build_targets(["tiny-flux@http://127.0.0.1:8000/v1", "dall-e-3@https://api.openai.com/v1"], [],
                            ["local-key", "sk-openai"])
    assert [(t.base_url, t.api_key) for t in targets] == [
        ("http://127.0.0.1:8000/v1", "local-key"), ("https://api.openai.com/v1", "sk-openai")]
    with pytest.raises(ValueError, match="one --api-key per endpoint"):
        build_targets(["a@http://h1/v1", "b@http://h2/v1"], [], ["only-one"])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    with pytest.raises(ValueError, match="one --api-key per endpoint"):
        build_targets(["a"], ["http://h1/v1", "http://h2/v1"], [])
    assert build_targets(["a", "b"], [], [])[0].api_key == "sk-env"  # one endpoint: the default one


def test_credentials_in_a_url_are_left_out_of_labels_and_reports() -> None:
    [target] = build_targets(["m@https://user:s3cret@proxy.example:8443/v1"], [], ["k"])
    assert target.base_url == "https://user:s3cret@proxy.example:8443/v1"  # the client still gets them
    assert target.shown_url == "https://proxy.example:8443/v1"
    assert target.label == "m @ proxy.example:8443" and "s3cret" not in repr(target)


def test_price_table_flag_then_registry() -> None:
    prices = PriceTable({"mine": 0.5})
    assert prices.cost("mine", 2, "1024x1024", None) == (1.0, "flag")
    assert prices.cost("dall-e-3", 1, "1024x1024", "hd") == (0.08, "table")
    assert prices.cost("unknown-model", 1, "1024x1024", None) == (None, None)


def test_bench_compares_two_models_against_a_real_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    models = {"sim-a": SIM, "sim-b": {**SIM, "price_usd": 0.001, "step_seconds_per_megapixel": 0.05}}
    with running_server(data_dir=tmp_path / "data", model_cache=tmp_path / "cache", models=models) as server:
        code = main(["bench", "--base-url", server.api_url, "--model", "sim-a", "--model", "sim-b",
                     "--size", "256x256", "--n", "2", "--concurrency", "3", "--requests", "5",
                     "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    assert [t["model"] for t in report["targets"]] == ["sim-a", "sim-b"]
    assert len(report["requests"]) == 10
    for record in report["requests"]:
        assert record["ok"] and record["images"] == 2 and record["latency_s"] > 0
        assert record["cost_source"] == "perf" and record["perf"]["batch_size"] >= 1
    by_model = {t["model"]: t["summary"] for t in report["targets"]}
    assert by_model["sim-a"]["cost_usd_per_image"] == pytest.approx(0.003)
    assert by_model["sim-b"]["cost_usd_per_image"] == pytest.approx(0.001)
    table = (out / "bench.md").read_text()
    assert "| target | ok/requests | p50 latency (s) | p95 latency (s) | images/s | cost per image (USD) |" in table
    assert "sim-a @ 127.0.0.1" in table and "5/5" in table
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert CHART_SKIPPED in capsys.readouterr().out


def test_bench_records_errors_and_exits_nonzero(tmp_path: Path) -> None:
    with running_server(data_dir=tmp_path / "data", model_cache=tmp_path / "cache", models={"sim": SIM}) as server:
        code = main(["bench", "--base-url", server.api_url, "--model", "sim", "--size", "100x100",
                     "--requests", "2", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 1
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["targets"][0]["summary"]["errors"] == 2
    assert report["requests"][0]["error"].startswith("HTTP 400")


def test_request_arguments_send_response_format_and_quality_only_when_set() -> None:
    base = {"model": "m", "prompt": "p", "n": 1, "size": "1024x1024"}
    assert request_arguments("m", BenchOptions(prompt="p")) == {**base, "response_format": "b64_json"}
    assert request_arguments("m", BenchOptions(prompt="p", response_format=None, quality="medium")) == {
        **base, "quality": "medium"}


def test_answer_shape_counts_decoded_bytes_without_decoding() -> None:
    images = [Image(b64_json=base64.b64encode(b"x" * size).decode()) for size in (1, 2, 3, 100)]
    assert answer_shape(images) == ("b64_json", 106)
    assert answer_shape([Image(url="http://h/a.png")]) == ("url", None)
    assert answer_shape([Image(url="http://h/a.png"), images[0]]) == ("mixed", None)
    assert answer_shape([]) == (None, None)


def test_gpt_image_models_bench_without_response_format_and_with_their_quality(
        openai_api: OpenAIEmulator, tmp_path: Path) -> None:
    # The default still sends response_format, which GPT image models refuse.
    assert bench(openai_api, tmp_path / "refused", "--model", "gpt-image-1") == 1
    refused = json.loads((tmp_path / "refused" / "bench.json").read_text())
    assert "Unknown parameter: 'response_format'" in refused["targets"][0]["summary"]["first_error"]
    openai_api.reset()

    code = bench(openai_api, tmp_path / "out", "--model", "gpt-image-1", "--response-format", "none",
                 "--quality", "low", "--price", "gpt-image-1=0.011")
    assert code == 0
    bodies = [call.body for call in openai_api.calls("generate")]
    assert len(bodies) == 2 and all("response_format" not in b and b["quality"] == "low" for b in bodies)
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["options"]["response_format"] is None
    for record in report["requests"]:  # base64 came back unasked: counted all the same
        assert record["ok"] and record["images"] == 1 and record["latency_s"] > 0
        assert record["returned"] == "b64_json" and record["image_bytes"] == len(png(1024, 1024))
    summary = report["targets"][0]["summary"]
    assert summary["returned"] == ["b64_json"] and summary["image_bytes_per_image"] == len(png(1024, 1024))
    assert summary["cost_usd_per_image"] == pytest.approx(0.011) and summary["cost_sources"] == ["flag"]
    assert "no response_format" in (tmp_path / "out" / "bench.md").read_text()


@pytest.mark.parametrize(("flags", "sent", "returned"), [
    ((), {"response_format": "b64_json"}, "b64_json"),  # the default body is what it always was
    (("--response-format", "url"), {"response_format": "url"}, "url"),
    (("--response-format", "none"), {}, "url"),  # DALL-E's own default is url
])
def test_dall_e_bodies_and_what_came_back(openai_api: OpenAIEmulator, tmp_path: Path, flags: tuple[str, ...],
                                          sent: dict[str, str], returned: str) -> None:
    assert bench(openai_api, tmp_path, "--model", "dall-e-2", *flags) == 0
    body = openai_api.calls("generate")[0].body
    assert {k: v for k, v in body.items() if k != "prompt"} == {"model": "dall-e-2", "n": 1, "size": "1024x1024",
                                                                **sent}
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {r["returned"] for r in report["requests"]} == {returned}
    expected_bytes = len(png(1024, 1024)) if returned == "b64_json" else None
    assert report["targets"][0]["summary"]["image_bytes_per_image"] == expected_bytes


def test_quality_is_passed_through(openai_api: OpenAIEmulator, tmp_path: Path) -> None:
    assert bench(openai_api, tmp_path, "--model", "dall-e-3", "--quality", "hd") == 0
    assert openai_api.calls("generate")[0].body["quality"] == "hd"
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["targets"][0]["summary"]["cost_usd_per_image"] == pytest.approx(0.08)  # the table's hd price


def test_the_key_is_never_printed_or_written(openai_api: OpenAIEmulator, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    wrong = "sk-wrong-SECRET-0000aaaa"  # OpenAI's 401 message echoes the key it was given
    assert bench(openai_api, tmp_path / "bad", "--model", "dall-e-2", key=wrong) == 1
    assert bench(openai_api, tmp_path / "good", "--model", "dall-e-2") == 0
    assert openai_api.calls("generate")[0].headers["authorization"] == f"Bearer {wrong}"
    printed = capsys.readouterr()
    written = [path.read_text() for path in (tmp_path / "bad").glob("bench.*") if path.suffix != ".png"]
    written += [path.read_text() for path in (tmp_path / "good").glob("bench.*") if path.suffix != ".png"]
    assert len(written) == 4
    for text in [printed.out, printed.err, *written]:
        assert wrong not in text and OPENAI_KEY not in text
    assert "Incorrect API key provided: ***" in (tmp_path / "bad" / "bench.md").read_text()
    assert OPENAI_KEY not in repr(build_targets(["m"], [], [OPENAI_KEY]))


@pytest.mark.parametrize(("flags", "option"), [
    (("--n", "0"), "--n"),
    (("--concurrency", "0"), "--concurrency"),
    (("--requests", "0"), "--requests"),
    (("--warmup", "-1"), "--warmup"),
    (("--timeout", "0"), "--timeout"),
    (("--extra-body", "{not json"), "--extra-body"),
    (("--extra-body", "[1]"), "--extra-body"),
    (("--price", "m"), "--price"),
    (("--base-url", "http://h1/v1", "--base-url", "http://h2/v1", "--api-key", "k"), "--api-key"),
    (("--model", "@http://h1/v1"), "--model"),
])
def test_every_cli_error_names_its_option(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          flags: tuple[str, ...], option: str) -> None:
    assert main(["bench", "--model", "m", "--out", str(tmp_path), "--no-progress", *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and option in error
    assert not list(tmp_path.iterdir())  # refused before any request


def test_api_key_help_matches_behaviour(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "once for all endpoints" not in text
    assert "a single key (default: $OPENAI_API_KEY) only when there is one endpoint" in text
    assert "low/medium/high/auto" in text and "{b64_json,url,none}" in text


def test_every_option_shows_its_default() -> None:
    parsers = argparse.ArgumentParser().add_subparsers()
    add_bench_command(parsers)
    parser = parsers.choices["bench"]
    text = parser.format_help().split("\noptions:\n", 1)[1]
    entries = {match[1]: " ".join(match[2].split())
               for match in re.finditer(r"^  (-[^\s,]+)(.*?)(?=^  -|\Z)", text, re.MULTILINE | re.DOTALL)}
    options = [action.option_strings[-1] for action in parser._actions if action.dest != "help"]
    assert len(options) == 16 and set(options) <= set(entries)
    for option in options:
        assert "default:" in entries[option] or "required, no default" in entries[option], (option, entries[option])
    for option, default in (("--size", "1024x1024"), ("--n", "1"), ("--concurrency", "4"), ("--requests", "16"),
                            ("--warmup", "0"), ("--timeout", "600.0"), ("--response-format", "b64_json"),
                            ("--base-url", "http://127.0.0.1:8000/v1"), ("--api-key", "$OPENAI_API_KEY"),
                            ("--quality", "not sent"), ("--out", "bench-results/<local time YYYYmmdd-HHMMSS>"),
                            ("--prompt", "A lighthouse on a cliff at dawn")):
        assert f"default: {default}" in entries[option], (option, entries[option])
    assert "default: None" not in " ".join(entries.values())


def test_without_matplotlib_the_json_and_markdown_are_written_and_one_line_says_why_no_chart(
        openai_api: OpenAIEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as after `make serve`, which has no `bench` extra
    assert bench(openai_api, tmp_path, "--model", "dall-e-2") == 0
    assert json.loads((tmp_path / "bench.json").read_text())["targets"][0]["summary"]["ok"] == 2
    assert "dall-e-2 @ 127.0.0.1" in (tmp_path / "bench.md").read_text()
    assert not (tmp_path / "bench.png").exists()
    printed = capsys.readouterr().out.splitlines()
    assert [line for line in printed if "chart" in line] == [CHART_SKIPPED]
    assert "pip install 'imageserve[bench]'" in CHART_SKIPPED

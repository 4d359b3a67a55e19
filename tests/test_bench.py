"""`imageserve bench` against a real local server: JSON, Markdown and (with matplotlib) a PNG."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from server.bench import PriceTable, RequestRecord, build_targets, percentile, summarize
from server.cli import main
from tests.server_harness import running_server

SIM = {"kind": "simulated", "time_scale": 0.002, "default_steps": 4, "custom_sizes": True, "price_usd": 0.003}


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
        assert "no chart written" in capsys.readouterr().out


def test_bench_records_errors_and_exits_nonzero(tmp_path: Path) -> None:
    with running_server(data_dir=tmp_path / "data", model_cache=tmp_path / "cache", models={"sim": SIM}) as server:
        code = main(["bench", "--base-url", server.api_url, "--model", "sim", "--size", "100x100",
                     "--requests", "2", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 1
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["targets"][0]["summary"]["errors"] == 2
    assert report["requests"][0]["error"].startswith("HTTP 400")

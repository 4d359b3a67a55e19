"""The GPU benchmark's report: JSON for the raw numbers, a Markdown table for people, both rewritten after every
configuration so a run cut short keeps what it measured.

Two tables: the full run's (every config and batch size, speed-up over eager) and the lease preset's, which
puts each row beside the published FLUX.1-dev H100 anchor it corresponds to and beside the compute floor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.compute_floor import SUSTAINED_BF16_TFLOPS
from benchmarks.lease import PUBLISHED_H100


def write_report(report: dict[str, Any], stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(to_markdown(report))


def to_markdown(report: dict[str, Any]) -> str:
    return _lease_markdown(report) if report.get("preset") == "lease" else _full_markdown(report)


def _tflops(row: dict[str, Any]) -> str:
    return f"{row['achieved_tflops']:.1f}" if "achieved_tflops" in row else "-"


def _title(report: dict[str, Any]) -> str:
    if report["machine"].get("gpu"):
        return report["machine"]["gpu"]
    if report.get("cpu_full_size"):
        return "CPU, full-size architectures in fp32 (checks the full-size path; not GPU results)"
    return "CPU (smoke run: numbers mean nothing)"


def _header(report: dict[str, Any]) -> list[str]:
    machine, setup = report["machine"], report["settings"]
    cuda = ""
    if machine.get("gpu"):
        cuda = f", CUDA {machine['cuda']}, compute capability {machine['compute_capability']}"
        cuda += "".join(f", {name} {machine[key]}" for name, key in (("driver", "driver"), ("cuDNN", "cudnn"))
                        if machine.get(key))
    return [
        f"Date {report['date']}; torch {machine['torch']}, diffusers {machine['diffusers']}, "
        f"torchao {machine['torchao'] or 'not installed'}{cuda}",
        f"{setup['size']}x{setup['size']}, {setup['steps']} steps, {setup['dtype']}, random weights, text encoders "
        f"not run (random prompt embeddings), mean of {setup['repeats']} calls after one warm-up call.",
    ]


def _notes(row: dict[str, Any]) -> str:
    notes = [f"skipped: {row['skipped']}"] if "skipped" in row else []
    notes += [row["error"]] if "error" in row else []
    notes += [f"{name} off: {reason}" for name, reason in row["switched_off"].items()]
    return "; ".join(notes)


def _full_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# GPU benchmark: {_title(report)}", "", *_header(report), "",
        "| model | config | batch | s per call | s per image | images/s | vs eager | TFLOP/s | peak GiB | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    eager = {(row["model"], row["batch"]): row.get("s_per_image") for row in report["results"]
             if row["config"] == "eager"}
    for row in report["results"]:
        if "mean_s" not in row:
            lines.append(f"| {row['model']} | {row['config']} | {row['batch']} | - | - | - | - | - | "
                         f"{row.get('peak_memory_gib', '-')} | {_notes(row)} |")
            continue
        base = eager.get((row["model"], row["batch"]))
        speedup = f"{base / row['s_per_image']:.2f}x" if base else "-"
        lines.append(f"| {row['model']} | {row['config']} | {row['batch']} | {row['mean_s']:.3f} | "
                     f"{row['s_per_image']:.3f} | {row['images_per_s']:.3f} | {speedup} | "
                     f"{_tflops(row)} | {row.get('peak_memory_gib', '-')} | {_notes(row)} |")
    floors = {(row["model"], row["batch"]): row["tflop_per_call"] for row in report["results"]
              if "tflop_per_call" in row}
    lines += ["", "TFLOP/s: the call's FLOPs (counted on the meta device by `benchmarks/compute_floor.py`, text "
              "encoders excluded) over its time. Compute floor per call at "
              f"{SUSTAINED_BF16_TFLOPS:g} TFLOP/s: "
              + ", ".join(f"{model} batch {batch} {tflop / SUSTAINED_BF16_TFLOPS:.2f} s"
                          for (model, batch), tflop in floors.items()) + ".",
              "", "Published FLUX.1-dev batch-1 times on one H100 for comparison: "
              + ", ".join(f"{name} {seconds} s" for name, seconds in PUBLISHED_H100.items()) + "."]
    return "\n".join(lines) + "\n"


def _comparable(report: dict[str, Any]) -> bool:
    """The anchors are FLUX.1-dev at 1024x1024, 28 steps, batch 1 on a GPU: other runs only show them."""
    setup = report["settings"]
    return bool(report["machine"].get("gpu")) and setup["size"] == 1024 and setup["steps"] == 28


def _lease_row(row: dict[str, Any], eager: float | None, comparable: bool) -> str:
    anchor = row.get("anchor")
    published = f"{PUBLISHED_H100[anchor]:.1f} ({anchor})" if anchor else "-"
    floor = row["tflop_per_call"] / SUSTAINED_BF16_TFLOPS / row["batch"] if "tflop_per_call" in row else None
    cells = [row["model"], f"**{row['config']}**", row.get("label", ""), "-", published, "-",
             f"{floor:.2f}" if floor is not None else "-", "-", "-", "-", str(row.get("peak_memory_gib", "-")),
             f"{row['warmup_s']:.1f}" if "warmup_s" in row else "-",
             f"{row['config_s']:.0f}" if "config_s" in row else "-",
             ", ".join(row["applied"]) or "-", _notes(row) or "-"]
    if "s_per_image" in row:
        seconds = row["s_per_image"]
        cells[3] = f"{seconds:.3f}"
        if anchor:
            cells[5] = f"{PUBLISHED_H100[anchor] / seconds:.2f}x" if comparable else "n/a (not 1024 px, 28 steps)"
        cells[7] = f"{seconds / floor:.2f}x" if floor else "-"
        cells[8] = f"{eager / seconds:.2f}x" if eager else "-"
        cells[9] = _tflops(row)
    return "| " + " | ".join(cells) + " |"


def _lease_markdown(report: dict[str, Any]) -> str:
    comparable = _comparable(report)
    lines = [
        f"# GPU benchmark, lease preset: {_title(report)}", "", *_header(report),
        f"Deadline {report['settings'].get('deadline_s')} s; configurations that would pass it are skipped.", "",
        "| model | config | what it is | s per image | published H100 s (FLUX.1-dev) | speed vs published | "
        f"floor s at {SUSTAINED_BF16_TFLOPS:g} TFLOP/s | x floor | vs eager | TFLOP/s | peak GiB | warm-up s | "
        "config s | applied | notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    eager = {(row["model"], row["batch"]): row.get("s_per_image") for row in report["results"]
             if row["config"] == "eager"}
    lines += [_lease_row(row, eager.get((row["model"], row["batch"])), comparable) for row in report["results"]]
    lines += [
        "",
        "Published anchors, FLUX.1-dev 1024x1024, 28 steps, batch 1, one H100: "
        + ", ".join(f"{name} {seconds} s" for name, seconds in PUBLISHED_H100.items())
        + " (compile alone has no lease row). Speed vs published: anchor over measured, above 1 is faster. "
        f"Floor: the call's FLOPs (counted on the meta device, text encoders excluded) at "
        f"{SUSTAINED_BF16_TFLOPS:g} TFLOP/s, 2.6 s for FLUX.1-dev; x floor: measured over floor. config s: the "
        "whole configuration, build, optimization, compile, warm-up and timed calls.",
    ]
    if not comparable:
        lines += ["", "Not a GPU run at 1024x1024 and 28 steps: the anchors are shown, not compared."]
    return "\n".join(lines) + "\n"

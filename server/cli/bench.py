"""`imageserve bench`: latency, throughput and cost of any OpenAI-compatible images endpoint.

Every `--model` runs against every `--base-url` (or against its own with `MODEL@URL`), one target after
the other so they do not slow each other down, each with `--concurrency` clients sending `--requests`
requests through the official `openai` client. The output folder gets `bench.json` (every request's
latency, cost and `perf` fields), `bench.md` (p50, p95, images/s, cost per image) and `bench.png` (needs
matplotlib, the `bench` extra: pip install 'imageserve[bench]'; without it the chart is skipped, and said so).

Cost comes from the response's `perf.cost_usd` when the server sends one (ours does), else from
`--price MODEL=USD`, else from the built-in price table (the registry's list prices per image).

OpenAI's GPT image models (gpt-image-1 ...) refuse `response_format` and take quality low/medium/high/auto:
bench them with `--response-format none --quality low` (or any other quality; it is passed through).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from server.cli.bench_chart import write_chart
from server.cli.bench_report import DEFAULT_PROMPT, BenchOptions, RequestRecord, markdown_table, summarize
from server.redaction import redact
from server.registry import ModelRegistry

logger = logging.getLogger(__name__)

NO_KEY = "none"  # what the client sends when no key is given; not a secret


@dataclass(frozen=True)
class Target:
    base_url: str
    model: str
    api_key: str

    def __repr__(self) -> str:  # neither the key nor credentials in the URL
        return f"Target(base_url={self.shown_url!r}, model={self.model!r})"

    @property
    def shown_url(self) -> str:
        """The URL for reports: without any `user:password@` it may carry."""
        parts = urlsplit(self.base_url)
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()

    @property
    def label(self) -> str:
        return f"{self.model} @ {urlsplit(self.shown_url).netloc or self.shown_url}"


class PriceTable:
    """Per-image list prices: `--price` flags first, then the registry's defaults."""

    def __init__(self, flags: dict[str, float] | None = None) -> None:
        self._flags = dict(flags or {})
        self._registry = ModelRegistry.from_overrides({})

    def cost(self, model: str, images: int, size: str, quality: str | None) -> tuple[float | None, str | None]:
        if model in self._flags:
            return round(self._flags[model] * images, 6), "flag"
        spec = self._registry.get(model)
        if spec is None:
            return None, None
        return spec.cost(images, size, quality or "standard"), "table"


# -- running ----------------------------------------------------------------------------------------


def request_arguments(model: str, options: BenchOptions) -> dict[str, Any]:
    """The `images.generate` keywords; `response_format` and `quality` only when set."""
    arguments: dict[str, Any] = {"model": model, "prompt": options.prompt, "n": options.n, "size": options.size}
    if options.response_format:
        arguments["response_format"] = options.response_format
    if options.quality:
        arguments["quality"] = options.quality
    if options.extra_body:
        arguments["extra_body"] = options.extra_body
    return arguments


def _b64_size(text: str) -> int:
    """Decoded length from the base64 length, without decoding (that would hold up the event loop)."""
    return len(text) * 3 // 4 - (len(text) - len(text.rstrip("=")))


def answer_shape(data: list[Any]) -> tuple[str | None, int | None]:
    """What the answer carried ("b64_json", "url", "mixed") and its image bytes, whatever we asked for."""
    kinds = {"b64_json" if item.b64_json else "url" if item.url else "none" for item in data}
    if not kinds:
        return None, None
    if kinds != {"b64_json"}:
        return (kinds.pop() if len(kinds) == 1 else "mixed"), None
    return "b64_json", sum(_b64_size(item.b64_json) for item in data)


def redact_key(text: str, api_key: str) -> str:
    """Error bodies may echo the key (OpenAI's 401 does); it must not reach the report."""
    return redact(text, () if api_key == NO_KEY else (api_key,))


async def _one_request(client: Any, target: Target, options: BenchOptions, prices: PriceTable, index: int,
                       began: float) -> RequestRecord:
    import openai

    started = time.perf_counter()
    try:
        response = await client.images.generate(**request_arguments(target.model, options))
    except openai.APIStatusError as exc:
        return RequestRecord(target.label, index, started - began, time.perf_counter() - started, False,
                             error=f"HTTP {exc.status_code}: {_error_message(exc, target.api_key)}")
    except openai.APIError as exc:
        return RequestRecord(target.label, index, started - began, time.perf_counter() - started, False,
                             error=redact_key(f"{type(exc).__name__}: {exc}", target.api_key))
    latency = time.perf_counter() - started
    perf = dict((response.model_extra or {}).get("perf") or {})
    data = response.data or []
    returned, image_bytes = answer_shape(data)
    if isinstance(perf.get("cost_usd"), int | float):
        cost, source = float(perf["cost_usd"]), "perf"
    else:
        cost, source = prices.cost(target.model, len(data), options.size, options.quality)
    return RequestRecord(target.label, index, started - began, latency, True, len(data), cost, source, perf=perf,
                         returned=returned, image_bytes=image_bytes)


def _error_message(exc: Any, api_key: str) -> str:
    """The body's message, redacted before it is cut short so no part of the key is left."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return redact_key(str(error["message"]), api_key)[:300]
    return redact_key(str(exc), api_key)[:300]


async def run_target(target: Target, options: BenchOptions, prices: PriceTable) -> tuple[list[RequestRecord], float]:
    """All of one target's requests at its concurrency; returns the records and the run's wall time."""
    from openai import AsyncOpenAI
    from tqdm import tqdm

    client = AsyncOpenAI(base_url=target.base_url, api_key=target.api_key, max_retries=0,
                         timeout=options.timeout_s)
    try:
        if options.warmup:
            await asyncio.gather(*(_one_request(client, target, options, prices, -1, time.perf_counter())
                                   for _ in range(options.warmup)))
        records: list[RequestRecord] = []
        pending = iter(range(options.requests))
        bar = tqdm(total=options.requests, desc=target.label, unit="req", disable=not options.progress,
                   file=sys.stderr)
        began = time.perf_counter()

        async def client_loop() -> None:
            for index in pending:
                record = await _one_request(client, target, options, prices, index, began)
                records.append(record)
                bar.update(1)
                if not record.ok:
                    bar.set_postfix_str(f"errors={sum(not r.ok for r in records)}")

        await asyncio.gather(*(client_loop() for _ in range(max(1, options.concurrency))))
        wall = time.perf_counter() - began
        bar.close()
    finally:
        await client.close()
    records.sort(key=lambda record: record.index)
    return records, wall


# -- the command ------------------------------------------------------------------------------------


DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


def build_targets(models: list[str], base_urls: list[str], api_keys: list[str]) -> list[Target]:
    """`--model` x `--base-url`; `MODEL@URL` pins a model to one endpoint.

    Endpoints are the `--base-url`s, then pinned URLs, in order of first appearance. Keys pair with them
    in that order; one key (or $OPENAI_API_KEY) only serves when there is one endpoint, so a hosted
    vendor's key is never sent to another server: which endpoint a lone key belongs to cannot be told.
    """
    pinned = [model.partition("@") for model in models]
    if any(not name for name, _, _ in pinned):
        raise ValueError("--model needs a model id (MODEL or MODEL@URL)")
    if not base_urls and any(not url for _, _, url in pinned):
        base_urls = [DEFAULT_BASE_URL]
    endpoints: list[str] = []
    for url in [*base_urls, *(url for _, _, url in pinned if url)]:
        if url.rstrip("/") not in endpoints:
            endpoints.append(url.rstrip("/"))
    if len(api_keys) == len(endpoints):
        keys = dict(zip(endpoints, api_keys, strict=True))
    elif len(endpoints) == 1 and len(api_keys) <= 1:
        keys = {endpoints[0]: api_keys[0] if api_keys else (os.environ.get("OPENAI_API_KEY") or NO_KEY)}
    else:
        raise ValueError(f"give one --api-key per endpoint ({len(endpoints)}, not {len(api_keys)}; a single key "
                         f"only serves one endpoint), in this order: {', '.join(endpoints)}")
    targets: list[Target] = []
    for name, _, url in pinned:
        for endpoint in [url.rstrip("/")] if url else [u.rstrip("/") for u in base_urls]:
            targets.append(Target(endpoint, name, keys[endpoint]))
    return targets


def _price_flags(values: list[str]) -> dict[str, float]:
    prices: dict[str, float] = {}
    for value in values:
        model, _, price = value.partition("=")
        try:
            prices[model] = float(price)
        except ValueError:
            raise ValueError(f"--price takes MODEL=USD_PER_IMAGE, not {value!r}") from None
    return prices


def _extra_body(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ValueError(f"--extra-body takes a JSON object, not {text!r}")
    return body


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad numbers up front, naming the option."""
    for option, value, least in (("--n", args.n, 1), ("--concurrency", args.concurrency, 1),
                                 ("--requests", args.requests, 1), ("--warmup", args.warmup, 0)):
        if value < least:
            raise ValueError(f"{option} must be at least {least}, not {value}")
    if not args.timeout > 0:
        raise ValueError(f"--timeout must be more than 0 seconds, not {args.timeout}")


async def run_bench(targets: list[Target], options: BenchOptions, prices: PriceTable, out: Path) -> dict[str, Any]:
    all_records: list[RequestRecord] = []
    results: list[dict[str, Any]] = []
    for target in targets:
        records, wall = await run_target(target, options, prices)
        all_records += records
        results.append({"label": target.label, "base_url": target.shown_url, "model": target.model,
                        "summary": summarize(records, wall)})
    out.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC)
    report = {
        "created": created.isoformat(timespec="seconds"),
        "options": {k: v for k, v in asdict(options).items() if k != "progress"},
        "targets": results,
        "requests": [asdict(record) for record in all_records],
    }
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    table = markdown_table(results, options)
    (out / "bench.md").write_text(table)
    keys = [target.api_key for target in targets if target.api_key != NO_KEY]
    skipped = write_chart(results, all_records, out / "bench.png", options, created, keys)
    report["chart_skipped"] = skipped
    print(table)
    print(skipped or f"chart: {out / 'bench.png'}")
    print(f"raw numbers: {out / 'bench.json'}")
    return report


def cmd_bench(args: argparse.Namespace) -> int:
    logging.getLogger().setLevel(logging.WARNING)  # per-request HTTP logs would garble the progress bar
    check_args(args)  # errors are ValueErrors: the CLI prints them and exits 2
    targets = build_targets(args.model, args.base_url or [], args.api_key or [])
    options = BenchOptions(size=args.size, n=args.n, concurrency=args.concurrency, requests=args.requests,
                           warmup=args.warmup, prompt=args.prompt, quality=args.quality or None,
                           response_format=None if args.response_format == "none" else args.response_format,
                           extra_body=_extra_body(args.extra_body), timeout_s=args.timeout,
                           progress=not args.no_progress)
    prices = PriceTable(_price_flags(args.price or []))
    out = args.out or Path("bench-results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)  # a bad --out fails now, not after the whole run
    report = asyncio.run(run_bench(targets, options, prices, out))
    return 0 if all(result["summary"]["ok"] for result in report["targets"]) else 1


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written; "(default: X)" after every option whose help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default:" in text or action.required or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def add_bench_command(commands: Any) -> None:
    """Register `bench` on the CLI's subparsers; every option's help says its default."""
    bench = commands.add_parser("bench", help="measure latency, throughput and cost of images endpoints",
                                description=__doc__, formatter_class=_HelpFormatter)
    bench.add_argument("--base-url", action="append", help="OpenAI-compatible API base (repeatable; default: "
                       f"{DEFAULT_BASE_URL}, when some --model has no @URL)")
    bench.add_argument("--model", action="append", required=True,
                       help="model id (repeatable; required, no default); MODEL@URL runs it against that "
                       "endpoint only")
    bench.add_argument("--size", default="1024x1024", help="image size WIDTHxHEIGHT")
    bench.add_argument("--n", type=int, default=1, help="images per request")
    bench.add_argument("--concurrency", type=int, default=4, help="clients sending at once, per target")
    bench.add_argument("--requests", type=int, default=16, help="requests per target")
    bench.add_argument("--warmup", type=int, default=0, help="unrecorded requests first (e.g. to load a model)")
    bench.add_argument("--api-key", action="append",
                       help="once per endpoint, in order: the --base-urls, then MODEL@URL endpoints; a single "
                       "key (default: $OPENAI_API_KEY) only when there is one endpoint, so a key never "
                       "reaches another server")
    bench.add_argument("--response-format", choices=("b64_json", "url", "none"), default="b64_json",
                       help="none: not sent (GPT image models refuse it); the endpoint's default answers")
    bench.add_argument("--quality", default=None,
                       help="sent as given, e.g. standard/hd (DALL-E 3) or low/medium/high/auto (GPT image "
                       "models) (default: not sent)")
    bench.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt of every request")
    bench.add_argument("--extra-body", default=None,
                       help='JSON merged into the body, e.g. \'{"seed": 1}\' (default: nothing added)')
    bench.add_argument("--price", action="append", metavar="MODEL=USD",
                       help="per-image price for models whose responses carry no perf.cost_usd (repeatable; "
                       "default: the built-in price table, else the cost is unknown)")
    bench.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    bench.add_argument("--out", type=Path, default=None,
                       help="output folder (default: bench-results/<local time YYYYmmdd-HHMMSS>)")
    bench.add_argument("--no-progress", action="store_true",
                       help="no progress bar (default: a progress bar on stderr)")
    bench.set_defaults(handler=cmd_bench)

"""What the usage ledger's two writes per request cost (issue 11: "database writes off the hot path where
exactness allows"): admission (lock the key, sum its windows, reserve) and settling (the final record).

Runs the real `UsageLedger` on SQLite in a temporary data dir (the default database: WAL journal,
`synchronous=NORMAL`, so no fsync per commit) and, when `--postgres-url` is given, on that PostgreSQL database.
Prints and writes `benchmarks/results/ledger-writes.json` / `.md` with machine and date.

    python benchmarks/ledger_writes.py [--requests 300] [--postgres-url postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.types import GenerationRequest  # noqa: E402
from server.accounts.credentials import Principal  # noqa: E402
from server.accounts.database import Database  # noqa: E402
from server.accounts.keys import KeyStore  # noqa: E402
from server.accounts.ledger import UsageLedger  # noqa: E402
from server.accounts.outcome import Outcome  # noqa: E402
from server.settings import DEFAULT_TIERS, TierSettings  # noqa: E402


def measure(url: str, requests: int) -> dict[str, float]:
    database = Database(url)
    database.engine()  # create and migrate
    tiers = {name: TierSettings(**limits) for name, limits in DEFAULT_TIERS.items()}
    _key, record = KeyStore(database).create(tier="enterprise", name=f"bench-{time.time_ns()}")
    principal = Principal(key_id=record.key_id, name=record.name, tier="enterprise")
    ledger = UsageLedger(database, tiers)
    admit, settle = [], []
    for index in range(requests):
        request = GenerationRequest(request_id=f"req_bench_{time.time_ns()}_{index}", model="tiny-flux",
                                    prompt="p", n=1, width=256, height=256)
        started = time.perf_counter()
        ledger.admit_sync(principal, request)
        admitted = time.perf_counter()
        ledger.settle_sync(Outcome(principal, request.request_id, request.model, 1, request.size, request.quality,
                                   0.0, 1.0, "ok"), 1)
        settle.append((time.perf_counter() - admitted) * 1000)
        admit.append((admitted - started) * 1000)
    database.dispose()
    return {"admit_p50_ms": round(statistics.median(admit), 3), "settle_p50_ms": round(statistics.median(settle), 3),
            "admit_p90_ms": round(sorted(admit)[int(0.9 * len(admit))], 3),
            "settle_p90_ms": round(sorted(settle)[int(0.9 * len(settle))], 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite (WAL, synchronous=NORMAL)"] = measure(f"sqlite:///{tmp}/imageserve.db", args.requests)
    if args.postgres_url:
        results["postgresql (synchronous_commit=on)"] = measure(args.postgres_url, args.requests)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "requests": args.requests,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": platform.python_version()}, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ledger-writes.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# The usage ledger's writes per request", "",
             f"Date: {report['date']}. Machine: {report['machine']['platform']}, {report['machine']['cpus']} CPUs, "
             f"Python {report['machine']['python']}. {args.requests} requests, one at a time.", "",
             "| database | admit p50 ms | admit p90 ms | settle p50 ms | settle p90 ms |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {r['admit_p50_ms']} | {r['admit_p90_ms']} | {r['settle_p50_ms']} | {r['settle_p90_ms']} |"
              for name, r in results.items()]
    (args.out / "ledger-writes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

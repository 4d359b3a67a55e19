"""Usage retention: ledger rows older than `Settings.usage_retention_days` become per-day totals.

A row is folded when its UTC day is before `today - days` (so it is at least `days` whole days old, never
inside the minute or day windows that quota admission sums), it is settled (never a `pending`
reservation still in flight) and it finished before that day began (a reservation released as stale may
still be settled by its slow request; such a row waits). Folding adds, per (key, model, day), what the
reports would count for those rows to `usage_daily` (images and cost of the "ok" rows, every row as a
request) and deletes them, in one transaction per batch of at most `batch_size` rows, oldest days first.

Two servers may fold at once: on PostgreSQL each batch locks its rows (`FOR UPDATE SKIP LOCKED`), so a row
is folded by exactly one of them, and the totals are added with one atomic upsert per (key, model, day),
in a fixed order (no deadlock); on SQLite the batch holds the database write lock. Folding again folds
nothing twice: a folded row no longer exists. Reports read `totals_source`, the ledger's rows UNION ALL
the folded totals in ONE statement, so a report never sees a batch half done.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict

from sqlalchemy import Connection, Subquery, case, delete, func, or_, select, union_all

from server.accounts.database import insert_or_add, usage_daily, usage_ledger

RETENTION_BATCH_ROWS = 1000  # rows folded per transaction
RETENTION_CHECK_SECONDS = 3600.0  # how often a running server folds


class Cutoff:
    """What may be folded at one moment: rows of days before `day` that finished before it began."""

    def __init__(self, now: float, days: int) -> None:
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ValueError(f"usage retention must be a whole number of days, at least 1, not {days!r}")
        first_kept = dt.datetime.fromtimestamp(now, dt.UTC).date() - dt.timedelta(days=days)
        self.day = first_kept.isoformat()
        self.ts = dt.datetime(first_kept.year, first_kept.month, first_kept.day, tzinfo=dt.UTC).timestamp()


def fold_batch(conn: Connection, cutoff: Cutoff, batch_size: int = RETENTION_BATCH_ROWS) -> int:
    """Fold up to `batch_size` rows older than the cutoff into `usage_daily`, in the caller's transaction;
    returns how many rows were folded (0: nothing left that this caller may take)."""
    ledger = usage_ledger.c
    rows = conn.execute(
        select(ledger.id, ledger.key_id, ledger.model, ledger.day, ledger.status, ledger.images, ledger.cost_usd)
        .where(ledger.day < cutoff.day, ledger.status != "pending",
               or_(ledger.finished_at.is_(None), ledger.finished_at < cutoff.ts))
        .order_by(ledger.day, ledger.id).limit(batch_size)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite already holds the write lock
    ).all()
    if not rows:
        return 0
    images: dict[tuple[str, str, str], int] = defaultdict(int)
    costs: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    requests: dict[tuple[str, str, str], int] = defaultdict(int)
    for row in rows:
        group = (row.key_id, row.model, row.day)
        requests[group] += 1
        if row.status == "ok":
            images[group] += int(row.images)
            costs[group].append(float(row.cost_usd or 0.0))
    totals = [{"key_id": key_id, "model": model, "day": day, "images": images[(key_id, model, day)],
               "cost_usd": math.fsum(costs[(key_id, model, day)]), "requests": count}
              for (key_id, model, day), count in sorted(requests.items())]  # one lock order for every writer
    insert_or_add(conn, usage_daily, totals, added=("images", "cost_usd", "requests"))
    deleted = conn.execute(delete(usage_ledger).where(ledger.id.in_([row.id for row in rows]))).rowcount
    if deleted != len(rows):  # cannot happen: the rows are locked; never commit a double count
        raise RuntimeError(f"usage retention: deleted {deleted} of {len(rows)} locked ledger rows")
    return len(rows)


def totals_source(start: dt.date, end: dt.date, key_id: str | None) -> Subquery:
    """Per (key, model, day) over [start, end]: the ledger's rows as the reports count them (requests: every
    row; images and cost: rows with status "ok"), UNION ALL the totals folded from older rows."""
    ledger = usage_ledger.c
    ok = ledger.status == "ok"
    raw = select(
        ledger.key_id, ledger.model, ledger.day,
        func.sum(case((ok, ledger.images), else_=0)).label("images"),
        func.sum(case((ok, ledger.cost_usd), else_=0.0)).label("cost_usd"),
        func.count().label("requests"),
    ).where(ledger.day >= start.isoformat(), ledger.day <= end.isoformat())
    daily = usage_daily.c
    folded = select(daily.key_id, daily.model, daily.day, daily.images, daily.cost_usd, daily.requests).where(
        daily.day >= start.isoformat(), daily.day <= end.isoformat())
    if key_id is not None:
        raw = raw.where(ledger.key_id == key_id)
        folded = folded.where(daily.key_id == key_id)
    return union_all(raw.group_by(ledger.key_id, ledger.model, ledger.day), folded).subquery("usage_totals")


"""The database-backed `UsageGate`: exact per-key image quotas, and the usage ledger.

`admit` runs one transaction per request: lock the key's row (`SELECT ... FOR UPDATE` on PostgreSQL;
SQLite's `BEGIN IMMEDIATE` already holds the write lock), sum the images the key has in the last minute
and day, and either insert a `pending` ledger row reserving `n` images or a `rate_limit_exceeded` row
and raise the 429. Because the sum and the insert happen under the lock, concurrent requests (threads,
processes, replicas sharing PostgreSQL) are admitted one after another and never overshoot.
`settle` turns the row into the final record and gives back images that were not produced.

A reservation that is never settled (its server crashed mid-request) is given back by `release_stale`,
at start and then every few minutes (`release_stale_forever`), once it is older than the longest a request
can take (`Settings.stale_reservation_seconds`, 15 minutes by default: there is no hard request deadline
to derive it from, since a local model may load and queue first). If a slow request is settled after its
reservation was released, `settle` still records its real outcome, so the ledger and bill stay right.

Rows older than the retention setting are folded into per-day totals (`apply_retention`, and
`retention_forever` in a running server; server/accounts/retention.py); the reports read both, so they
stay exact per day.

Times come from an injectable clock, so tests move through minutes and days without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from pipelines.errors import ImageServeError
from pipelines.types import GenerationRequest
from server.accounts.credentials import Principal
from server.accounts.database import Database, api_keys, insert_ignore, usage_ledger
from server.accounts.outcome import Outcome
from server.accounts.quotas import DAY, MINUTE, Limits, refusal, seconds_until_fits, tier_limits
from server.accounts.retention import RETENTION_BATCH_ROWS, RETENTION_CHECK_SECONDS, Cutoff, fold_batch, totals_source
from server.errors import RateLimitExceeded

logger = logging.getLogger(__name__)

STALE_AFTER_SECONDS = 900.0  # the default of Settings.stale_reservation_seconds
STALE_CHECK_SECONDS = 300.0  # how often a running server looks for stale reservations


def utc_day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


class UsageLedger:
    """Quotas before work and the ledger after it; see the module docs."""

    def __init__(self, db: Database, tiers: Mapping[str, Any], clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.tiers = tiers
        self.clock = clock

    # --- UsageGate ----------------------------------------------------------------------------------

    async def admit(self, principal: Principal, request: GenerationRequest) -> None:
        reservation = asyncio.ensure_future(asyncio.to_thread(self.admit_sync, principal, request))
        try:
            await asyncio.shield(reservation)
        except asyncio.CancelledError:
            # The client went away while we reserved: the thread may still commit the reservation, and
            # nobody will settle it, so wait for it and give the images back before passing the cancel on.
            with contextlib.suppress(Exception):
                await reservation
                await asyncio.to_thread(self.settle_sync, Outcome(
                    principal, request.request_id, request.model, 0, request.size, request.quality, 0.0, 0.0,
                    "cancelled"), request.n)
            raise

    async def settle(self, outcome: Outcome, reserved: int) -> None:
        await asyncio.to_thread(self.settle_sync, outcome, reserved)

    def admit_sync(self, principal: Principal, request: GenerationRequest) -> None:
        with self.db.transaction() as conn:
            key = self._lock_key(conn, principal)
            now = self.clock()  # once the key's row is locked: a request stamped earlier could commit later
            limits = self.limits_for(key["tier"], key["images_per_minute"], key["images_per_day"])
            error: RateLimitExceeded | None = None
            for window in limits.windows():
                used = self._used(conn, principal.key_id, now - window.seconds)
                if used + request.n <= window.limit:
                    continue
                events = conn.execute(select(usage_ledger.c.ts, usage_ledger.c.images).where(
                    usage_ledger.c.key_id == principal.key_id, usage_ledger.c.ts > now - window.seconds,
                    usage_ledger.c.images > 0)).all()
                wait = seconds_until_fits([(ts, images) for ts, images in events], request.n, window, now)
                candidate = refusal(window, used, request.n, wait, key["tier"])
                if error is None or candidate.retry_after > error.retry_after:
                    error = candidate
            conn.execute(usage_ledger.insert().values(
                request_id=request.request_id, key_id=principal.key_id, ts=now, day=utc_day(now),
                model=request.model, requested=request.n, images=0 if error else request.n, size=request.size,
                quality=request.quality, cost_usd=0.0, status=error.type if error else "pending",
                finished_at=now if error else None))
            conn.execute(update(api_keys).where(api_keys.c.key_id == principal.key_id).values(last_used_at=now))
        if error is not None:
            logger.info("%s: refused %d images for key %s: %s", request.request_id, request.n, principal.key_id,
                        error.message)
            raise error

    async def release_stale_forever(self, older_than: float = STALE_AFTER_SECONDS,
                                    every: float = STALE_CHECK_SECONDS) -> None:
        """`release_stale` every `every` seconds until cancelled; a database error waits for the next round."""
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(self.release_stale, older_than)
            except SQLAlchemyError as exc:
                logger.warning("could not release stale reservations: %s", str(exc).splitlines()[0])

    def release_stale(self, older_than: float = STALE_AFTER_SECONDS) -> int:
        """Give back reservations never settled (the server died mid-request); returns how many rows.

        An unsettled request never answered its client, so its images were not delivered. The age guard
        leaves alone requests still running here or on another replica.
        """
        now = self.clock()
        with self.db.transaction() as conn:
            released = conn.execute(update(usage_ledger).where(
                usage_ledger.c.status == "pending", usage_ledger.c.ts < now - older_than).values(
                images=0, status="abandoned", finished_at=now)).rowcount
        if released:
            logger.warning("gave back the images of %d requests left unsettled by a stopped server", released)
        return released

    def apply_retention(self, days: int, batch_size: int = RETENTION_BATCH_ROWS) -> int:
        """Fold the rows older than `days` days into per-day totals (one transaction per batch); returns
        how many rows were folded. Idempotent; safe with other servers folding at the same time."""
        cutoff = Cutoff(self.clock(), days)
        folded = 0
        while batch := self.fold_once(cutoff, batch_size):
            folded += batch
        return folded

    def fold_once(self, cutoff: Cutoff, batch_size: int = RETENTION_BATCH_ROWS) -> int:
        """One batch of `apply_retention`, in its own transaction."""
        with self.db.transaction() as conn:
            return fold_batch(conn, cutoff, batch_size)

    async def retention_forever(self, days: int | None, every: float = RETENTION_CHECK_SECONDS) -> None:
        """`apply_retention(days)` now and then every `every` seconds until cancelled (None: keep every row,
        return at once). A batch runs in a worker thread, so a cancel waits for one batch at most; a database
        error waits for the next round."""
        if days is None:
            return
        while True:
            try:
                cutoff, folded = Cutoff(self.clock(), days), 0
                while batch := await asyncio.to_thread(self.fold_once, cutoff):
                    folded += batch
                if folded:
                    logger.info("usage retention: folded %d ledger rows before %s into daily totals", folded,
                                cutoff.day)
            except SQLAlchemyError as exc:
                logger.warning("could not fold old usage rows: %s", str(exc).splitlines()[0])
            await asyncio.sleep(every)

    def settle_sync(self, outcome: Outcome, reserved: int) -> None:
        now = self.clock()
        images = min(outcome.images, reserved) if outcome.status == "ok" else 0
        values = {"model": outcome.model, "images": images, "size": outcome.size, "quality": outcome.quality,
                  "cost_usd": outcome.cost_usd, "latency_ms": round(outcome.latency_ms, 1),
                  "status": outcome.status, "finished_at": now}
        with self.db.transaction() as conn:
            updated = conn.execute(update(usage_ledger).where(  # "abandoned": released as stale, yet it finished
                usage_ledger.c.request_id == outcome.request_id,
                usage_ledger.c.status.in_(("pending", "abandoned"))).values(**values))
            if updated.rowcount == 0:  # admitted elsewhere (another gate): record it all the same
                insert_ignore(conn, usage_ledger, request_id=outcome.request_id, key_id=outcome.principal.key_id,
                              ts=now, day=utc_day(now), requested=reserved, **values)
        if images < reserved:
            logger.info("%s: gave back %d of %d reserved images (%s)", outcome.request_id, reserved - images,
                        reserved, outcome.status)

    # --- limits -------------------------------------------------------------------------------------

    def limits_for(self, tier: str, per_minute: int | None, per_day: int | None) -> Limits:
        base = tier_limits(self.tiers, tier)
        if base is None:
            raise ImageServeError(f"This key's tier '{tier}' is not configured on the server; ask its operator.")
        return Limits.resolve(base, per_minute, per_day)

    def _lock_key(self, conn: Connection, principal: Principal) -> Any:
        query = select(api_keys.c.tier, api_keys.c.images_per_minute, api_keys.c.images_per_day).where(
            api_keys.c.key_id == principal.key_id).with_for_update()
        row = conn.execute(query).one_or_none()
        if row is None:  # a principal from another authenticator: give it a row to count and lock on
            insert_ignore(conn, api_keys, key_id=principal.key_id, name=principal.key_id, key_hash=None,
                          source="builtin", tier=principal.tier, created_at=self.clock())
            row = conn.execute(query).one()
        return row._mapping

    @staticmethod
    def _used(conn: Connection, key_id: str, since: float) -> int:
        return int(conn.scalar(select(func.coalesce(func.sum(usage_ledger.c.images), 0)).where(
            usage_ledger.c.key_id == key_id, usage_ledger.c.ts > since)) or 0)

    # --- reports ------------------------------------------------------------------------------------

    def today(self) -> dt.date:
        return dt.date.fromisoformat(utc_day(self.clock()))

    def report(self, key_id: str, start: dt.date, end: dt.date) -> dict[str, Any]:
        """One key's totals over [start, end] (UTC days): overall, per model, per day; plus its limits now."""
        now = self.clock()
        with self.db.read() as conn:
            rows = self._totals(conn, start, end, key_id)
            key = conn.execute(select(api_keys.c.name, api_keys.c.tier, api_keys.c.images_per_minute,
                                      api_keys.c.images_per_day).where(api_keys.c.key_id == key_id)).one_or_none()
            used_minute = self._used(conn, key_id, now - MINUTE)
            used_day = self._used(conn, key_id, now - DAY)
        report: dict[str, Any] = {"object": "usage", "start": start.isoformat(), "end": end.isoformat()}
        report.update(summarise(rows))
        if key is not None:
            limits = self.limits_for(key.tier, key.images_per_minute, key.images_per_day)
            report["key"] = {"name": key.name, "tier": key.tier}
            report["limits"] = {"images_per_minute": limits.per_minute, "images_per_day": limits.per_day,
                                "used_last_minute": used_minute, "used_last_day": used_day}
        return report

    def report_all(self, start: dt.date, end: dt.date, by: str = "model") -> list[dict[str, Any]]:
        """Every key's totals over [start, end], one dict per (key, model) or, with `by="day"`, (key, day), or
        with `by="both"`, (key, model, day)."""
        if by not in ("model", "day", "both"):
            raise ValueError(f"by must be 'model', 'day' or 'both', not {by!r}")
        groups = ("model", "day") if by == "both" else (by,)
        with self.db.read() as conn:
            rows = self._totals(conn, start, end, None, by=groups)
            names = {r.key_id: (r.name, r.tier) for r in conn.execute(
                select(api_keys.c.key_id, api_keys.c.name, api_keys.c.tier))}
        return [{"key_id": r.key_id, "name": names.get(r.key_id, (r.key_id, "?"))[0],
                 "tier": names.get(r.key_id, ("", "?"))[1], **{name: getattr(r, name) for name in groups},
                 "images": int(r.images or 0), "cost_usd": round(float(r.cost_usd or 0), 6),
                 "requests": int(r.requests)} for r in rows]

    @staticmethod
    def _totals(conn: Connection, start: dt.date, end: dt.date, key_id: str | None,
                by: tuple[str, ...] = ("model", "day")) -> list[Any]:
        """Totals per key and `by`: the ledger's rows and the per-day totals folded from older ones, read in
        one statement (one snapshot, even while a fold commits)."""
        source = totals_source(start, end, key_id)
        groups = [source.c.key_id, *(source.c[name] for name in by)]
        query = select(*groups, func.sum(source.c.images).label("images"),
                       func.sum(source.c.cost_usd).label("cost_usd"), func.sum(source.c.requests).label("requests"))
        return list(conn.execute(query.group_by(*groups).order_by(*groups)).all())


def summarise(rows: list[Any]) -> dict[str, Any]:
    """Fold (model, day) totals into overall, per-model and per-day totals."""
    total = {"images": 0, "cost_usd": 0.0, "requests": 0}
    by_model: dict[str, dict[str, Any]] = {}
    by_day: dict[str, dict[str, Any]] = {}
    for row in rows:
        amounts = {"images": int(row.images or 0), "cost_usd": float(row.cost_usd or 0),
                   "requests": int(row.requests)}
        for bucket in (total, by_model.setdefault(row.model, {"model": row.model, "images": 0, "cost_usd": 0.0,
                                                              "requests": 0}),
                       by_day.setdefault(row.day, {"date": row.day, "images": 0, "cost_usd": 0.0, "requests": 0})):
            for name, value in amounts.items():
                bucket[name] += value
    for bucket in (total, *by_model.values(), *by_day.values()):
        bucket["cost_usd"] = round(bucket["cost_usd"], 6)
    return {"total": total, "by_model": list(by_model.values()), "by_day": sorted(by_day.values(),
                                                                                  key=lambda b: b["date"])}

"""`GET /v1/usage`: the calling key's own totals, never another key's.

Query parameters `start` and `end` are UTC dates (YYYY-MM-DD), both inclusive; by default the last 30
days up to today. The answer has overall totals, totals per model and per day (images produced, their
cost, requests), and the key's limits with what it has used in the current minute and day.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from fastapi import APIRouter, Request

from server.accounts.ledger import UsageLedger
from server.api.deps import Authenticated
from server.errors import InvalidRequest

DEFAULT_DAYS = 30
MAX_DAYS = 366
_PARAMS = ("start", "end")


def parse_range(params: dict[str, str], today: dt.date) -> tuple[dt.date, dt.date]:
    """Validate the query parameters into (start, end), or a 400 naming the parameter."""
    for name in params:
        if name not in _PARAMS:
            raise InvalidRequest(f"Unrecognized query parameter: {name}. Supported: start, end.", param=name)
    dates: dict[str, dt.date] = {}
    for name in _PARAMS:
        raw = params.get(name)
        if raw is None:
            continue
        try:
            if len(raw) != 10:
                raise ValueError(raw)
            dates[name] = dt.date.fromisoformat(raw)
        except ValueError:
            raise InvalidRequest(f"Invalid value for '{name}': {raw!r}. Expected a date as YYYY-MM-DD.",
                                 param=name) from None
    end = dates.get("end", today)
    if "start" in dates:
        start = dates["start"]
    elif end - dt.date.min >= dt.timedelta(days=DEFAULT_DAYS - 1):
        start = end - dt.timedelta(days=DEFAULT_DAYS - 1)
    else:  # an end in the first days of year 1: the default range starts where the calendar does
        start = dt.date.min
    if start > end:
        raise InvalidRequest(f"Invalid value for 'start': {start.isoformat()} is after end {end.isoformat()}.",
                             param="start")
    if (end - start).days + 1 > MAX_DAYS:
        raise InvalidRequest(f"Invalid value for 'start': the range may cover at most {MAX_DAYS} days.",
                             param="start")
    return start, end


router = APIRouter()


@router.get("/v1/usage")
async def usage(request: Request, principal: Authenticated) -> dict[str, Any]:
    ledger: UsageLedger = request.app.state.ledger
    start, end = parse_range(dict(request.query_params), ledger.today())
    return await asyncio.to_thread(ledger.report, principal.key_id, start, end)

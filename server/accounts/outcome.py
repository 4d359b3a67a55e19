"""What happened to one request: what the service tells the usage ledger (billing) and the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from server.accounts.credentials import Principal


@dataclass(frozen=True)
class Outcome:
    """What happened to one request, for the usage ledger and metrics."""

    principal: Principal
    request_id: str
    model: str
    images: int
    size: str
    quality: str
    cost_usd: float
    latency_ms: float
    status: str  # "ok" or an error type

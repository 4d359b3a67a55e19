"""Wrong-key throttling: at most so many authentication failures per client address and minute.

Failures are counted in memory (`FailureLimiter`): they need no durability, and keeping them out of the
database means an attacker cannot make it write (checking a key only reads; see `server.accounts.keys`).
The count is per process: with several workers or replicas a client gets up to that many tries per minute
from each. The address is the TCP peer's, so behind a reverse proxy every client shares the proxy's
address (`X-Forwarded-For` is not trusted).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from server.accounts.quotas import MINUTE
from server.errors import RateLimitExceeded


class FailureLimiter:
    """At most `limit` failures per `window` seconds per client; past that, 429 until the oldest expires.

    Used for authentication: once a client has had `limit` wrong keys in the window, every further
    attempt from it is refused before its key is looked at, so guessing stops paying off. The attempts
    refused this way are not counted, so a client that stops is let in again after the window.
    """

    def __init__(self, limit: int, window: float = MINUTE, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float] | None:
        failures = self._failures.get(client)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        return failures

    def check(self, client: str | None) -> None:
        """Raise `RateLimitExceeded` if this client is over its failure budget."""
        if not self.limit or client is None:
            return
        now = self.clock()
        failures = self._recent(client, now)
        if failures is None or len(failures) < self.limit:
            return
        wait = failures[len(failures) - self.limit] + self.window - now
        raise RateLimitExceeded(
            "Too many failed authentication attempts from this address; slow down.",
            retry_after=wait, code="too_many_auth_failures")

    def record(self, client: str | None) -> None:
        if not self.limit or client is None:
            return
        now = self.clock()
        if client not in self._failures and len(self._failures) >= self.max_clients:
            self._prune(now)
        self._failures.setdefault(client, deque()).append(now)

    def _prune(self, now: float) -> None:
        for client in list(self._failures):
            self._recent(client, now)
        while len(self._failures) >= self.max_clients:  # still full: forget the stalest client
            stalest = min(self._failures, key=lambda c: self._failures[c][-1])
            del self._failures[stalest]

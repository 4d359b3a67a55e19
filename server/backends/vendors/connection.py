"""What every vendor adapter shares: one HTTP client per provider, a concurrency limit, one retry loop and
one mapping from vendor answers to our errors.

Error policy (the same for all vendors, so it lives here once):
- 401/403 on an API call: our key is wrong or lacks access -> 502 `upstream_error` naming the provider and
  the setting. On an image link (no key is sent there) it is an expired or unsigned link instead.
- 429: the vendor is rate limiting us -> our 429 with the vendor's Retry-After (or a configured default).
- 5xx, 408, connection errors, timeouts: retried `max_retries` times with exponential backoff, then 502.
- Anything else the adapter did not classify (content policy and the like): 502 without the vendor body.
- Image bytes that do not fully decode (a truncated or corrupt file): 502 `upstream_bad_response`.
- Every provider slot busy for `queue_timeout_seconds`: our 503 `server_overloaded`, never an endless wait.
Vendor bodies never reach our messages: they can echo keys ("Incorrect API key provided: sk-...").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from pipelines.errors import ImageServeError, QueueFull
from server.backends.vendors.image_check import BadImage, ImageInfo, check_image
from server.errors import RateLimitExceeded, UpstreamError
from server.settings import ProviderSettings, provider_env_name

logger = logging.getLogger(__name__)

T = TypeVar("T")

PROVIDER_NAMES = {"openai": "OpenAI", "bfl": "Black Forest Labs", "ideogram": "Ideogram", "google": "Google"}
USER_AGENT = "imageserve-vendor-adapter"
MAX_VENDOR_RETRY_AFTER_SECONDS = 3600.0  # a longer (or infinite) Retry-After from a vendor is capped to this


class RetryableError(Exception):
    """A failed attempt worth repeating: vendor 5xx, connection error, timeout. Never leaves this package."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class UpstreamReply:
    """A vendor answer reduced to what error mapping needs (works for httpx and the OpenAI SDK alike)."""

    status: int
    headers: Mapping[str, str]
    body: Any = None  # parsed JSON when there was any

    def error_field(self, name: str) -> Any:
        """`body["error"][name]` for `{"error": {...}}` bodies (OpenAI, Google), else `body[name]`."""
        body = self.body
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            body = body["error"]
        return body.get(name) if isinstance(body, dict) else None


Classifier = Callable[[UpstreamReply, "Vendor"], ImageServeError | None]


def _seconds(raw: str, scale: float) -> float | None:
    """A finite, non-negative number of seconds, at most an hour: a vendor's header is not trusted further."""
    try:
        seconds = float(raw) / scale
    except ValueError:
        return None
    return min(max(0.0, seconds), MAX_VENDOR_RETRY_AFTER_SECONDS) if math.isfinite(seconds) else None


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms and (seconds := _seconds(raw_ms, 1000)) is not None:
        return seconds
    raw = lowered.get("retry-after")
    if not raw:
        return None
    if (seconds := _seconds(raw, 1)) is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - time.time()), MAX_VENDOR_RETRY_AFTER_SECONDS)


class Vendor:
    """One provider's shared connection: HTTP client, concurrency limit, retry policy and error mapping.

    Shared by every model of that provider (see `VendorPool`), so the limit holds across models.
    """

    def __init__(self, provider: str, settings: ProviderSettings) -> None:
        self.provider = provider
        self.name = PROVIDER_NAMES.get(provider, provider)
        self.settings = settings
        self.key_setting = provider_env_name(provider, "api_key")
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_seconds),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=min(settings.max_connections, 32),
            ),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )
        self._limiter = asyncio.Semaphore(settings.max_concurrency)
        self._shared: dict[str, Any] = {}
        self._closers: list[Callable[[], Awaitable[object]]] = []

    @property
    def api_key(self) -> str:
        key = self.settings.api_key
        return key.get_secret_value() if key is not None else ""

    def shared(self, name: str, factory: Callable[[], T], closer: Callable[[T], Awaitable[object]]) -> T:
        """A provider-wide object built on first use (e.g. the OpenAI SDK client), closed with the vendor."""
        if name not in self._shared:
            value = factory()
            self._shared[name] = value
            self._closers.append(lambda: closer(value))
        return self._shared[name]

    async def aclose(self) -> None:
        for close in reversed(self._closers):
            try:
                await close()
            except Exception:  # closing must not mask the reason we are shutting down
                logger.warning("closing a %s client failed", self.name, exc_info=True)
        self._closers.clear()
        self._shared.clear()
        await self.http.aclose()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the provider's `max_concurrency` upstream slots, waiting at most `queue_timeout_seconds`.

        A request that cannot get a slot in time is refused with a 503 rather than queued without end
        (holding its quota reservation, and with no vendor-side timeout running yet).
        """
        timeout = self.settings.queue_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                await self._limiter.acquire()
        except TimeoutError:
            logger.warning(
                "all %d %s slots stayed busy for %gs; request refused",
                self.settings.max_concurrency,
                self.name,
                timeout,
            )
            raise QueueFull(
                f"Too many requests are waiting for {self.name}: all {self.settings.max_concurrency} upstream "
                f"slots stayed busy for {timeout:g}s. Try again later.",
                # The provider's "come back later" hint, as for a vendor 429 without Retry-After.
                retry_after=max(1, math.ceil(self.settings.rate_limit_retry_after_seconds)),
                code="upstream_queue_full",
            ) from None
        try:
            yield
        finally:
            self._limiter.release()

    # --- retries ----

    def backoff(self, retry: int) -> float:
        s = self.settings
        delay = min(s.retry_backoff_max_seconds, s.retry_backoff_seconds * (2**retry))
        return delay * random.uniform(0.5, 1.0)

    async def retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` until it succeeds, raises a final error, or runs out of retries.

        Only `RetryableError` is retried. Cancellation is never caught here: it goes straight through,
        including out of the backoff sleep.
        """
        attempts = self.settings.max_retries + 1
        for number in range(1, attempts + 1):
            try:
                return await attempt()
            except RetryableError as exc:
                if number == attempts:
                    logger.warning(
                        "%s %s failed (%s); giving up after %d attempts",
                        self.name,
                        what,
                        exc.reason,
                        attempts,
                    )
                    raise UpstreamError(
                        f"{self.name} did not answer the {what} successfully after {attempts} attempts "
                        f"({exc.reason}).",
                        code="upstream_unavailable",
                    ) from None
                delay = self.backoff(number - 1)
                logger.info(
                    "%s %s failed (%s); retry %d of %d in %.2fs",
                    self.name,
                    what,
                    exc.reason,
                    number,
                    attempts - 1,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- error mapping ----

    def raise_for_reply(self, reply: UpstreamReply, what: str, classify: Classifier | None = None) -> None:
        """Turn a non-2xx vendor answer into our error (or a retry); return quietly on 2xx."""
        if 200 <= reply.status < 300:
            return
        if classify is not None:
            mapped = classify(reply, self)
            if mapped is not None:
                raise mapped
        if reply.status in (401, 403):
            raise self.auth_error(reply.status)
        if reply.status == 429:
            retry_after = parse_retry_after(reply.headers)
            if retry_after is None:
                retry_after = self.settings.rate_limit_retry_after_seconds
            raise RateLimitExceeded(
                f"{self.name} is rate limiting this server's requests; try again later.",
                retry_after=retry_after,
                code="upstream_rate_limited",
            )
        if reply.status >= 500 or reply.status == 408:
            raise RetryableError(f"HTTP {reply.status}")
        raise UpstreamError(f"{self.name} rejected the {what} (HTTP {reply.status}).")

    def auth_error(self, status: int | str) -> UpstreamError:
        return UpstreamError(
            f"{self.name} rejected this server's API key (HTTP {status}); check {self.key_setting}.",
            code="upstream_auth_failed",
        )

    def link_refused(self, status: int) -> UpstreamError:
        """A 401/403 from an image link: no key was sent there, so the link itself was refused."""
        return UpstreamError(
            f"The image link from {self.name} was refused (HTTP {status}); it has expired or is not signed.",
            code="upstream_bad_response",
        )

    def malformed(self, what: str) -> UpstreamError:
        return UpstreamError(
            f"{self.name} sent a malformed answer to the {what}.", code="upstream_bad_response"
        )

    # --- HTTP helpers ----

    async def _send(
        self, method: str, url: str, *, headers: Mapping[str, str] | None, json: Any, **form: Any
    ) -> httpx.Response:
        """One request; `form` may carry multipart `data` and `files` instead of `json`."""
        try:
            return await self.http.request(method, url, headers=headers, json=json, **form)
        except httpx.TimeoutException:
            raise RetryableError(f"timed out after {self.settings.timeout_seconds:g}s") from None
        except httpx.TransportError as exc:
            raise RetryableError(f"connection failed: {type(exc).__name__}") from None

    async def request_json(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        classify: Classifier | None = None,
        data: Mapping[str, str] | None = None,
        files: Any = None,
    ) -> Any:
        """One call with retries and error mapping, its body JSON (or a multipart form: `data` and `files`);
        returns the parsed JSON body of a 2xx answer."""
        form = {"data": data, "files": files} if files is not None else {}

        async def attempt() -> Any:
            response = await self._send(method, url, headers=headers, json=json, **form)
            body: Any = None
            try:
                body = response.json()
            except ValueError:
                if 200 <= response.status_code < 300:
                    raise self.malformed(what) from None
            self.raise_for_reply(UpstreamReply(response.status_code, response.headers, body), what, classify)
            return body

        return await self.retrying(what, attempt)

    async def download(self, url: str, *, what: str = "image download") -> bytes:
        """GET an image the vendor links to. No credentials are sent: the link is signed by the vendor."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise self.malformed(what)

        def refused_link(reply: UpstreamReply, vendor: Vendor) -> ImageServeError | None:
            return vendor.link_refused(reply.status) if reply.status in (401, 403) else None

        async def attempt() -> bytes:
            response = await self._send("GET", url, headers=None, json=None)
            self.raise_for_reply(UpstreamReply(response.status_code, response.headers), what, refused_link)
            return response.content

        return await self.retrying(what, attempt)


@dataclass(eq=False)
class _PoolEntry:
    """One pooled `Vendor` and how many started backends use it.

    The entry holds the settings (through the vendor) and the loop, so neither can be collected and its
    `id()` reused by another object while the entry is keyed by it.
    """

    vendor: Vendor
    loop: asyncio.AbstractEventLoop
    users: int = 0


class VendorPool:
    """Reference-counted `Vendor`s, one per provider settings object and event loop.

    Backends are built per model; each `start()` acquires and each `close()` releases, so the models of
    one provider share one HTTP client, and the last one out closes it. Keyed by the running loop too, so
    a client is never reused across event loops (tests start several).
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int, int], _PoolEntry] = {}

    def acquire(self, provider: str, settings: ProviderSettings) -> Vendor:
        loop = asyncio.get_running_loop()
        key = (provider, id(settings), id(loop))
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _PoolEntry(Vendor(provider, settings), loop)
        entry.users += 1
        return entry.vendor

    async def release(self, vendor: Vendor) -> None:
        for key, entry in list(self._entries.items()):
            if entry.vendor is vendor:
                entry.users -= 1
                if entry.users <= 0:
                    del self._entries[key]
                    await vendor.aclose()
                return

    def __len__(self) -> int:
        return len(self._entries)


# --- payload helpers ----


def inspect_image(data: bytes, vendor: Vendor, what: str = "image") -> ImageInfo:
    """The image's format and real size once it is known to be whole, or the vendor's malformed error.

    The header alone is not enough: a truncated or corrupt file has a valid header, and would then fail in
    transcoding (a 500) or reach the client broken. `check_image` checks PNG, JPEG and WebP from their
    structure and checksums (well under a millisecond) and fully decodes anything else; async callers run
    this in a thread all the same (`VendorBackend.image` does).
    """
    try:
        return check_image(data)
    except BadImage as exc:
        logger.info("%s sent an %s that is not a whole image: %s", vendor.name, what, exc)
        raise vendor.malformed(what) from None


def decode_b64(value: Any, vendor: Vendor, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise vendor.malformed(what)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise vendor.malformed(what) from None

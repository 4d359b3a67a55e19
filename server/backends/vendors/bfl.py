"""Black Forest Labs (`flux-pro`): submit a task, poll its `polling_url` until `Ready`, download the sample.

One image per task, so `n` images are `n` concurrent tasks; the first failure cancels the others, and so
does the client going away (the service cancels `generate`). Each task holds one of the provider's
`max_concurrency` slots from submission to download: BFL limits active tasks per account.

The global endpoint answers with a `polling_url` on the region that took the task (api.us1.bfl.ai and
the like), so the key is sent to the base URL's host or a sibling under the same parent domain, over the
same scheme; any other host is refused. The sample link (delivery.*.bfl.ai) is signed: no key goes there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from pipelines.types import SEED_MODULUS, GeneratedImage, GenerationRequest
from server.backends.vendors.adapter import VendorBackend, run_all
from server.backends.vendors.connection import Vendor
from server.backends.vendors.sizes import BFL_MAX, BFL_MIN, BFL_MULTIPLE, fit_to_grid
from server.errors import ContentPolicyViolation, UpstreamError
from server.settings import BFLProviderSettings

logger = logging.getLogger(__name__)

PENDING = frozenset({"Pending", "Processing", "Queued"})
MODERATED = frozenset({"Request Moderated", "Content Moderated"})
FAILED = frozenset({"Error", "Failed", "Task not found"})


def polling_url_allowed(polling_url: str, base_url: str) -> bool:
    """Is `polling_url` on the configured vendor host (or a sibling host of the same vendor domain)?"""
    poll, base = urlsplit(polling_url), urlsplit(base_url)
    if poll.scheme != base.scheme or not poll.hostname or not base.hostname or poll.username:
        return False
    if poll.hostname == base.hostname:
        return poll.port == base.port
    labels = base.hostname.split(".")
    if len(labels) < 3 or labels[-1].isdigit():  # no parent domain to share (an IP, "localhost", "bfl.ai")
        return False
    return poll.hostname.endswith("." + ".".join(labels[1:]))


class BFLBackend(VendorBackend):
    provider = "bfl"
    config: BFLProviderSettings

    def upstream_model(self) -> str:
        return self.config.endpoint

    async def _generate(self, vendor: Vendor, request: GenerationRequest):
        width, height = fit_to_grid(
            request.width, request.height, lo=BFL_MIN, hi=BFL_MAX, multiple=BFL_MULTIPLE
        )
        # No BFL-specific seed bound is assumed: the seeds of the n tasks count up from the one given and
        # wrap within the range our API accepts (`pipelines.types.SEED_MAX`).
        seeds = [
            None if request.seed is None else (request.seed + i) % SEED_MODULUS for i in range(request.n)
        ]
        images = await run_all([self._task(vendor, request, width, height, seed) for seed in seeds])
        return images, {}

    async def _task(
        self, vendor: Vendor, request: GenerationRequest, width: int, height: int, seed: int | None
    ) -> tuple[GeneratedImage, tuple[int, int]]:
        config = self.config
        headers = {"x-key": vendor.api_key, "accept": "application/json"}
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "width": width,
            "height": height,
            "output_format": config.output_format,
        }
        if seed is not None:
            body["seed"] = seed
        if config.safety_tolerance is not None:
            body["safety_tolerance"] = config.safety_tolerance

        async with vendor.slot():
            submitted = await vendor.request_json(
                "POST",
                f"{config.base_url}/v1/{self.upstream_model()}",
                what="task submission",
                headers=headers,
                json=body,
            )
            polling_url = submitted.get("polling_url") if isinstance(submitted, dict) else None
            if not isinstance(polling_url, str) or not polling_url:
                raise vendor.malformed("task submission")
            if not polling_url_allowed(polling_url, config.base_url):
                logger.warning(
                    "request %s: BFL polling URL is not on the configured host; refused", request.request_id
                )
                raise UpstreamError(
                    "Black Forest Labs answered with a polling URL outside its configured host.",
                    code="upstream_bad_response",
                )
            result = await self._poll(vendor, polling_url, headers, request.request_id)
            sample = result.get("sample") if isinstance(result, dict) else None
            if not isinstance(sample, str) or not sample:
                raise vendor.malformed("task result")
            data = await vendor.download(sample)
        result_seed = result.get("seed")
        return await self.image(vendor, data, seed=result_seed if isinstance(result_seed, int) else seed)

    async def _poll(self, vendor: Vendor, polling_url: str, headers: dict[str, str], request_id: str) -> Any:
        config = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.max_poll_seconds
        interval = config.poll_interval_seconds
        while True:
            answer = await vendor.request_json("GET", polling_url, what="task polling", headers=headers)
            status = answer.get("status") if isinstance(answer, dict) else None
            if status == "Ready":
                return answer.get("result")
            if status in MODERATED:
                logger.info("request %s: BFL task %s", request_id, status)
                raise ContentPolicyViolation()
            if status in FAILED:
                raise UpstreamError(
                    f"The Black Forest Labs task failed ({status}).", code="upstream_task_failed"
                )
            if status not in PENDING:
                raise vendor.malformed("task polling")
            if loop.time() + interval > deadline:
                raise UpstreamError(
                    f"The Black Forest Labs task was not ready after {config.max_poll_seconds:g}s.",
                    code="upstream_timeout",
                )
            await asyncio.sleep(interval)

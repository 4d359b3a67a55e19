"""Black Forest Labs (`flux-pro`): submit a task, poll its `polling_url` until `Ready`, download the sample.

One image per task, so `n` images are `n` concurrent tasks; the first failure cancels the others, and so
does the client going away (the service cancels `generate`). Each task holds one of the provider's
`max_concurrency` slots from submission to download: BFL limits active tasks per account.

The global endpoint answers with a `polling_url` on the region that took the task (api.us1.bfl.ai and
the like), so the key is sent to the base URL's host or a sibling under the same parent domain, over the
same scheme; any other host is refused. The sample link (delivery.*.bfl.ai) is signed: no key goes there.

Edits (`ModelSpec.edits`) are tasks too, polled the same way, on BFL's own editing models (API reference,
docs.bfl.ai): with a mask, FLUX.1 Fill [pro] (`POST /v1/flux-pro-1.0-fill`: `image` and `mask` as base64 PNGs
of the same size, the mask white where to repaint, black where to keep); without one, FLUX.1 Kontext [pro]
(`POST /v1/flux-kontext-pro`: `input_image` as a base64 PNG and the nearest `aspect_ratio`; it answers about one
megapixel in that shape). Neither takes our `strength`. BFL has no variations: they are refused (400 naming
`model`) before anything goes upstream.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from typing import Any
from urllib.parse import urlsplit

from pipelines.types import SEED_MODULUS, GeneratedImage, GenerationRequest, ImageEdit
from server.backends.vendors.adapter import VendorBackend, run_all
from server.backends.vendors.connection import Vendor
from server.backends.vendors.sizes import BFL_MAX, BFL_MIN, BFL_MULTIPLE, fit_to_grid, nearest_aspect_ratio
from server.errors import ContentPolicyViolation, InvalidRequest, UpstreamError
from server.settings import BFLProviderSettings

logger = logging.getLogger(__name__)

PENDING = frozenset({"Pending", "Processing", "Queued"})
MODERATED = frozenset({"Request Moderated", "Content Moderated"})
FAILED = frozenset({"Error", "Failed", "Task not found"})

FILL_ENDPOINT = "flux-pro-1.0-fill"  # FLUX.1 Fill [pro]: inpainting with a mask
KONTEXT_ENDPOINT = "flux-kontext-pro"  # FLUX.1 Kontext [pro]: an edit of the whole image from a prompt
# Kontext takes any `aspect_ratio` "W:H" between 21:9 and 9:21; we send the nearest of the usual ones.
KONTEXT_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16", "9:21")
FILL_STEPS = (15, 50)  # the Fill reference's ranges for `steps` and `guidance`
FILL_GUIDANCE = (1.5, 100.0)


def _png_b64(pixels: Any) -> str:
    """uint8 pixels (RGB, or a 2-D grey mask) as a base64 PNG, the way BFL takes images in JSON."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def edit_submission(request: GenerationRequest, edit: ImageEdit, output_format: str) -> tuple[str, dict[str, Any]]:
    """The endpoint and the body (less `seed` and `safety_tolerance`) of an edit: Fill with a mask (white where
    to repaint: our mask is already True there), Kontext without one. Encoding is CPU work: run in a thread."""
    import numpy as np

    if edit.mask is None:
        height, width = edit.image.shape[:2]
        return KONTEXT_ENDPOINT, {
            "prompt": request.prompt,
            "input_image": _png_b64(edit.image),
            "aspect_ratio": nearest_aspect_ratio(width, height, KONTEXT_RATIOS),
            "output_format": output_format,
        }
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "image": _png_b64(edit.image),
        "mask": _png_b64(np.where(edit.mask, 255, 0).astype(np.uint8)),
        "output_format": output_format,
    }
    if request.num_inference_steps is not None:
        body["steps"] = request.num_inference_steps
    if request.guidance_scale is not None:
        body["guidance"] = request.guidance_scale
    return FILL_ENDPOINT, body


def check_edit(request: GenerationRequest, model_id: str) -> ImageEdit:
    """Refuse what BFL cannot do before anything is encoded or sent."""
    edit = request.edit
    assert edit is not None
    if edit.variation:
        raise InvalidRequest(f"Model '{model_id}' cannot make variations: Black Forest Labs has no variation "
                             "endpoint. Use /v1/images/edits with a prompt instead.", param="model")
    ranges = {"num_inference_steps": (request.num_inference_steps, FILL_STEPS),
              "guidance_scale": (request.guidance_scale, FILL_GUIDANCE)}
    for name, (value, (lo, hi)) in ranges.items():
        if value is None:
            continue
        if edit.mask is None:
            raise InvalidRequest(f"'{name}' applies only to edits with a mask on model '{model_id}'.", param=name)
        if not lo <= value <= hi:
            raise InvalidRequest(f"Invalid value for '{name}': {value}; Black Forest Labs takes {lo:g} to {hi:g}.",
                                 param=name)
    return edit


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
        config = self.config
        if request.edit is None:
            width, height = fit_to_grid(
                request.width, request.height, lo=BFL_MIN, hi=BFL_MAX, multiple=BFL_MULTIPLE
            )
            endpoint = self.upstream_model()
            body: dict[str, Any] = {
                "prompt": request.prompt,
                "width": width,
                "height": height,
                "output_format": config.output_format,
            }
        else:
            edit = check_edit(request, self.spec.id)
            endpoint, body = await asyncio.to_thread(edit_submission, request, edit, config.output_format)
        if config.safety_tolerance is not None:
            body["safety_tolerance"] = config.safety_tolerance
        # No BFL-specific seed bound is assumed: the seeds of the n tasks count up from the one given and
        # wrap within the range our API accepts (`pipelines.types.SEED_MAX`).
        seeds = [
            None if request.seed is None else (request.seed + i) % SEED_MODULUS for i in range(request.n)
        ]
        images = await run_all([self._task(vendor, request, endpoint, body, seed) for seed in seeds])
        return images, ({} if request.edit is None else {"upstream_model": endpoint})

    async def _task(
        self, vendor: Vendor, request: GenerationRequest, endpoint: str, body: dict[str, Any], seed: int | None
    ) -> tuple[GeneratedImage, tuple[int, int]]:
        config = self.config
        headers = {"x-key": vendor.api_key, "accept": "application/json"}
        if seed is not None:
            body = {**body, "seed": seed}

        async with vendor.slot():
            submitted = await vendor.request_json(
                "POST",
                f"{config.base_url}/v1/{endpoint}",
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

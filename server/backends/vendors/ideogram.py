"""Ideogram (`ideogram-2`): `POST {base}/generate` with an `image_request`, then download the image links.

The size goes as the `resolution` nearest the requested one (Ideogram 2.0 takes resolution or aspect ratio;
a resolution pins the output size, so the size we report is known). MagicPrompt's rewrite of the prompt
comes back per image as `prompt`; that is our `revised_prompt`. A 422 is Ideogram's "prompt failed the
safety check"; an image flagged `is_image_safe: false` is left out, and if none is left the request is a
content-policy rejection. Image links are short-lived and need no key.
"""

from __future__ import annotations

import logging
from typing import Any

from pipelines.errors import ImageServeError
from pipelines.types import GeneratedImage, GenerationRequest
from server.backends.vendors.adapter import VendorBackend
from server.backends.vendors.connection import UpstreamReply, Vendor
from server.backends.vendors.sizes import IDEOGRAM_RESOLUTIONS, ideogram_resolution, nearest_size
from server.errors import ContentPolicyViolation
from server.settings import IdeogramProviderSettings

logger = logging.getLogger(__name__)

# Ideogram's own bound (a signed 32-bit int), narrower than the range our API accepts: larger seeds wrap.
IDEOGRAM_MAX_SEED = 2**31 - 1


def _classify(reply: UpstreamReply, vendor: Vendor) -> ImageServeError | None:
    if reply.status == 422:
        return ContentPolicyViolation()
    return None


class IdeogramBackend(VendorBackend):
    provider = "ideogram"
    config: IdeogramProviderSettings

    def upstream_model(self) -> str:
        return self.config.model

    def request_body(self, request: GenerationRequest) -> dict[str, Any]:
        size = nearest_size(request.width, request.height, IDEOGRAM_RESOLUTIONS)
        image_request: dict[str, Any] = {
            "prompt": request.prompt,
            "model": self.config.model,
            "resolution": ideogram_resolution(size),
            "num_images": request.n,
            "magic_prompt_option": self.config.magic_prompt_option,
        }
        if request.negative_prompt:
            image_request["negative_prompt"] = request.negative_prompt
        if request.seed is not None:
            image_request["seed"] = request.seed % (IDEOGRAM_MAX_SEED + 1)
        return {"image_request": image_request}

    async def _generate(self, vendor: Vendor, request: GenerationRequest):
        what = "image generation request"
        async with vendor.slot():
            answer = await vendor.request_json(
                "POST",
                f"{self.config.base_url}/generate",
                what=what,
                headers={"Api-Key": vendor.api_key},
                json=self.request_body(request),
                classify=_classify,
            )
            items = answer.get("data") if isinstance(answer, dict) else None
            if not isinstance(items, list) or not items:
                raise vendor.malformed(what)
            images: list[tuple[GeneratedImage, tuple[int, int]]] = []
            flagged = 0
            for item in items:
                if not isinstance(item, dict):
                    raise vendor.malformed(what)
                url = item.get("url")
                if item.get("is_image_safe") is False or not url:
                    flagged += 1
                    continue
                if not isinstance(url, str):
                    raise vendor.malformed(what)
                data = await vendor.download(url)
                seed, prompt = item.get("seed"), item.get("prompt")
                images.append(
                    await self.image(
                        vendor,
                        data,
                        seed=seed if isinstance(seed, int) else None,
                        revised_prompt=prompt if isinstance(prompt, str) else None,
                    )
                )
        if not images:
            raise ContentPolicyViolation()
        if flagged:
            logger.info(
                "request %s: Ideogram flagged %d of %d image(s) as unsafe",
                request.request_id,
                flagged,
                len(items),
            )
        return images, {"filtered": flagged} if flagged else {}

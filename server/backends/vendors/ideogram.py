"""Ideogram (`ideogram-2`): `POST {base}/generate` with an `image_request`, then download the image links.

The size goes as the `resolution` nearest the requested one (Ideogram 2.0 takes resolution or aspect ratio;
a resolution pins the output size, so the size we report is known). MagicPrompt's rewrite of the prompt
comes back per image as `prompt`; that is our `revised_prompt`. A 422 is Ideogram's "prompt failed the
safety check"; an image flagged `is_image_safe: false` is left out, and if none is left the request is a
content-policy rejection. Image links are short-lived and need no key.

Edits (`ModelSpec.edits`) go to Ideogram's 2.0 edit endpoint (`POST {base}/edit`, "Edit (legacy)" in the API
reference at developer.ideogram.ai): multipart with `image_file` (PNG), `mask` (a PNG of the same size, black
where to repaint, white where to keep), `prompt`, `model` (V_2 or V_2_TURBO only), `magic_prompt_option`,
`num_images` and `seed`; the answer and its errors are the generation's. That endpoint needs a mask, so an edit
without one is refused (400 naming `mask`), as is a `negative_prompt` (it has none). Variations are refused
(400 naming `model`): Ideogram's remix needs a prompt. Both before anything goes upstream.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

from pipelines.errors import ImageServeError
from pipelines.types import GeneratedImage, GenerationRequest, ImageEdit
from server.backends.vendors.adapter import VendorBackend
from server.backends.vendors.connection import UpstreamReply, Vendor
from server.backends.vendors.sizes import IDEOGRAM_RESOLUTIONS, ideogram_resolution, nearest_size
from server.errors import ContentPolicyViolation, InvalidRequest
from server.settings import IdeogramProviderSettings

logger = logging.getLogger(__name__)

# Ideogram's own bound (a signed 32-bit int), narrower than the range our API accepts: larger seeds wrap.
IDEOGRAM_MAX_SEED = 2**31 - 1
EDIT_MODELS = ("V_2", "V_2_TURBO")  # the only models `/edit` takes (the reference's ModelEnum)
Files = dict[str, tuple[str, bytes, str]]


def edit_model(model: str) -> str:
    """The configured model if `/edit` takes it, else the 2.0 model of the same speed."""
    if model in EDIT_MODELS:
        return model
    return "V_2_TURBO" if model.endswith("TURBO") else "V_2"


MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # per file, for `image_file` and `mask`


def _encoded(pixels: Any, kind: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, kind, **({"quality": 95} if kind == "JPEG" else {}))
    return buffer.getvalue()


def edit_files(edit: ImageEdit) -> Files:
    """The input as a PNG (a JPEG when the PNG would pass Ideogram's 10 MB) and its mask as a PNG in Ideogram's
    convention: black where to edit, white elsewhere."""
    import numpy as np

    assert edit.mask is not None
    image = ("image.png", _encoded(edit.image), "image/png")
    if len(image[1]) > MAX_UPLOAD_BYTES:  # a large, noisy photo: JPEG is an input format the endpoint takes
        image = ("image.jpg", _encoded(edit.image, "JPEG"), "image/jpeg")
    mask = np.where(edit.mask, 0, 255).astype(np.uint8)
    return {"image_file": image, "mask": ("mask.png", _encoded(mask), "image/png")}


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

    def edit_fields(self, request: GenerationRequest) -> dict[str, str]:
        """The text fields of `POST /edit`, once the edit is known to be one Ideogram can do (else a 400)."""
        edit = request.edit
        assert edit is not None
        if edit.variation:
            raise InvalidRequest(f"Model '{self.spec.id}' cannot make variations: Ideogram's remix needs a prompt. "
                                 "Use /v1/images/edits with a prompt and a mask instead.", param="model")
        if edit.mask is None:
            raise InvalidRequest("Ideogram edits need a mask: give 'mask' (or an image with transparent pixels) "
                                 "marking where to edit.", param="mask")
        if request.negative_prompt:
            raise InvalidRequest("Ideogram edits take no 'negative_prompt'.", param="negative_prompt")
        fields = {
            "prompt": request.prompt,
            "model": edit_model(self.config.model),
            "magic_prompt_option": self.config.magic_prompt_option,
            "num_images": str(request.n),
        }
        if request.seed is not None:
            fields["seed"] = str(request.seed % (IDEOGRAM_MAX_SEED + 1))
        return fields

    async def _generate(self, vendor: Vendor, request: GenerationRequest):
        headers = {"Api-Key": vendor.api_key}
        if request.edit is not None:
            what = "image edit request"
            fields = self.edit_fields(request)
            files = await asyncio.to_thread(edit_files, request.edit)  # PNG encoding is CPU work
            async with vendor.slot():
                answer = await self._post_form(vendor, f"{self.config.base_url}/edit", what, headers, fields, files)
                images, extra = await self._images(vendor, request, answer, what)
            return images, {**extra, "upstream_model": fields["model"]}
        what = "image generation request"
        async with vendor.slot():
            answer = await vendor.request_json(
                "POST",
                f"{self.config.base_url}/generate",
                what=what,
                headers=headers,
                json=self.request_body(request),
                classify=_classify,
            )
            return await self._images(vendor, request, answer, what)

    async def _post_form(
        self, vendor: Vendor, url: str, what: str, headers: dict[str, str], fields: dict[str, str], files: Files
    ) -> Any:
        """One multipart call with the vendor's retries and error mapping."""
        return await vendor.request_json("POST", url, what=what, headers=headers, data=fields, files=files,
                                         classify=_classify)

    async def _images(self, vendor: Vendor, request: GenerationRequest, answer: Any, what: str):
        """Download the images of a generation or edit answer; flagged ones are left out and counted."""
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

"""Google (`imagen-3`) through the Gemini API (Generative Language API), key in `x-goog-api-key`.

Two upstream protocols, picked by the configured model id (`IMAGESERVE_GOOGLE_MODEL`):
- `imagen-*`: `POST {base}/v1beta/models/<model>:predict` with `instances: [{prompt}]` and
  `parameters: {sampleCount, aspectRatio, negativePrompt?, personGeneration?, includeRaiReason}`; images come
  back in `predictions[].bytesBase64Encoded`. Filtered images are missing (or carry `raiFilteredReason`):
  we return what came, and a content-policy rejection if nothing did.
- `gemini-*` image models: `POST {base}/v1beta/models/<model>:generateContent` with
  `generationConfig: {responseModalities: ["IMAGE"], imageConfig: {aspectRatio}}`, one image per call, so
  `n` images are `n` concurrent calls. A negative prompt is folded into the text ("Avoid: ...").

Google has shut the Imagen models down on the Gemini API (Imagen 3 in June 2026, Imagen 4 on 2026-08-17)
in favour of Gemini image models; to keep `imagen-3` working, set `IMAGESERVE_GOOGLE_MODEL` (or
`[providers.google] model`) to a current one, e.g. `gemini-3.1-flash-image`. A 404 from Google says so.

Note: the Gemini API answers a bad key with 400 `API_KEY_INVALID`, not 401; it is mapped like a 401.
"""

from __future__ import annotations

import logging
from typing import Any

from pipelines.errors import ImageServeError
from pipelines.types import GeneratedImage, GenerationRequest
from server.backends.vendors.adapter import VendorBackend, run_all
from server.backends.vendors.connection import UpstreamReply, Vendor, decode_b64
from server.backends.vendors.sizes import GEMINI_IMAGE_RATIOS, IMAGEN_RATIOS, nearest_aspect_ratio
from server.errors import ContentPolicyViolation, UpstreamError
from server.settings import GoogleProviderSettings

logger = logging.getLogger(__name__)

# Finish / block reasons that mean "the safety system said no" rather than "something broke".
SAFETY_REASONS = frozenset({
    "SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST", "SPII",
    "RECITATION", "IMAGE_RECITATION",
})  # fmt: skip
_POLICY_HINTS = ("responsible ai", "sensitive words", "safety", "prohibited")


def _classify(reply: UpstreamReply, vendor: Vendor) -> ImageServeError | None:
    details = reply.error_field("details")
    reasons = (
        {d.get("reason") for d in details if isinstance(d, dict)} if isinstance(details, list) else set()
    )
    if "API_KEY_INVALID" in reasons or reply.error_field("status") == "UNAUTHENTICATED":
        return vendor.auth_error(f"{reply.status} API_KEY_INVALID")
    message = reply.error_field("message")
    if reply.status == 400 and isinstance(message, str) and any(h in message.lower() for h in _POLICY_HINTS):
        return ContentPolicyViolation()
    if reply.status == 404:
        return UpstreamError(
            "Google does not serve the configured model (Imagen models have been retired); set "
            "IMAGESERVE_GOOGLE_MODEL to a current image model, e.g. gemini-3.1-flash-image.",
            code="upstream_model_not_found",
        )
    return None


class GoogleBackend(VendorBackend):
    provider = "google"
    config: GoogleProviderSettings

    def upstream_model(self) -> str:
        return self.config.model

    def uses_predict(self) -> bool:
        return not self.upstream_model().startswith("gemini")

    async def _call(self, vendor: Vendor, method: str, body: dict[str, Any], what: str) -> Any:
        url = f"{self.config.base_url}/v1beta/models/{self.upstream_model()}:{method}"
        return await vendor.request_json(
            "POST", url, what=what, json=body, classify=_classify, headers={"x-goog-api-key": vendor.api_key}
        )

    async def _generate(self, vendor: Vendor, request: GenerationRequest):
        if self.uses_predict():
            return await self._predict(vendor, request), {}
        images = [
            image
            for batch in await run_all([self._generate_content(vendor, request) for _ in range(request.n)])
            for image in batch
        ]
        if not images:
            raise ContentPolicyViolation()
        return images, {}

    # --- Imagen: :predict ----

    def predict_body(self, request: GenerationRequest) -> dict[str, Any]:
        parameters: dict[str, Any] = {
            "sampleCount": request.n,
            "aspectRatio": nearest_aspect_ratio(request.width, request.height, list(IMAGEN_RATIOS)),
            "includeRaiReason": True,
        }
        if request.negative_prompt:
            parameters["negativePrompt"] = request.negative_prompt
        if self.config.person_generation:
            parameters["personGeneration"] = self.config.person_generation
        return {"instances": [{"prompt": request.prompt}], "parameters": parameters}

    async def _predict(self, vendor: Vendor, request: GenerationRequest):
        what = "image generation request"
        async with vendor.slot():
            answer = await self._call(vendor, "predict", self.predict_body(request), what)
        if not isinstance(answer, dict):
            raise vendor.malformed(what)
        predictions = answer.get("predictions", [])  # all images filtered: Google answers `{}`
        if not isinstance(predictions, list):
            raise vendor.malformed(what)
        images: list[tuple[GeneratedImage, tuple[int, int]]] = []
        for prediction in predictions:
            if not isinstance(prediction, dict):
                raise vendor.malformed(what)
            if "bytesBase64Encoded" not in prediction:
                continue  # filtered: `raiFilteredReason` says why
            data = decode_b64(prediction["bytesBase64Encoded"], vendor, what)
            prompt = prediction.get("prompt")  # an enhanced prompt, where the model rewrote it
            images.append(
                await self.image(vendor, data, revised_prompt=prompt if isinstance(prompt, str) else None)
            )
        if not images:
            logger.info("request %s: Google filtered every image", request.request_id)
            raise ContentPolicyViolation()
        if len(images) < request.n:
            logger.info(
                "request %s: Google filtered %d of %d image(s)",
                request.request_id,
                request.n - len(images),
                request.n,
            )
        return images

    # --- Gemini image models: :generateContent ----

    def generate_content_body(self, request: GenerationRequest) -> dict[str, Any]:
        text = request.prompt
        if request.negative_prompt:
            text = f"{text}\n\nAvoid: {request.negative_prompt}"
        ratio = nearest_aspect_ratio(request.width, request.height, GEMINI_IMAGE_RATIOS)
        return {
            "contents": [{"role": "user", "parts": [{"text": text}]}],
            "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": ratio}},
        }

    async def _generate_content(self, vendor: Vendor, request: GenerationRequest):
        """One image (or none, when the safety system dropped it)."""
        what = "image generation request"
        async with vendor.slot():
            answer = await self._call(vendor, "generateContent", self.generate_content_body(request), what)
        if not isinstance(answer, dict):
            raise vendor.malformed(what)
        feedback = answer.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            raise ContentPolicyViolation()
        candidates = answer.get("candidates")
        if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
            raise vendor.malformed(what)
        candidate = candidates[0]
        content = candidate.get("content") if isinstance(candidate.get("content"), dict) else {}
        parts = content.get("parts") or []
        images: list[tuple[GeneratedImage, tuple[int, int]]] = []
        for part in parts if isinstance(parts, list) else []:
            inline = part.get("inlineData") if isinstance(part, dict) else None
            if isinstance(inline, dict):
                images.append(await self.image(vendor, decode_b64(inline.get("data"), vendor, what)))
        if not images:
            if candidate.get("finishReason") in SAFETY_REASONS:
                return []
            raise vendor.malformed(what)
        return images[:1]

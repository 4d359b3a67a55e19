"""OpenAI (`dall-e-2`, `dall-e-3`) through the official SDK's `AsyncOpenAI().images.generate`.

Which upstream model an id goes to is `[providers.openai] models` (default: the same id). OpenAI retired the
DALL-E models on 2026-05-12 (SDK reference), so pointing them at a GPT image model is expected; those take
different parameters, translated here rather than failed:
- no `response_format` (always base64) and no `style`;
- sizes 1024x1024, 1536x1024, 1024x1536 (nearest shape is used);
- quality low/medium/high/auto: our `standard` -> `medium`, `hd` -> `high`.

The SDK's own retries are off (`max_retries=0`): the shared loop in `server.backends.vendors.connection` retries, so all
vendors behave the same. The SDK talks through its own `httpx2` client, one per provider like the others.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx2
import openai

from pipelines.errors import ImageServeError
from pipelines.types import GeneratedImage, GenerationRequest
from server.backends.vendors.adapter import VendorBackend
from server.backends.vendors.connection import RetryableError, UpstreamReply, Vendor, decode_b64
from server.backends.vendors.sizes import DALL_E_2_SIZES, DALL_E_3_SIZES, GPT_IMAGE_SIZES, nearest_size
from server.errors import ContentPolicyViolation, InvalidRequest, UpstreamError
from server.settings import OpenAIProviderSettings

logger = logging.getLogger(__name__)


def encode_rgba(pixels: Any, transparent: Any = None) -> bytes:
    """uint8 RGB pixels as a PNG; with `transparent` (a bool mask), those pixels fully transparent."""
    import io

    import numpy as np
    from PIL import Image

    alpha = np.full(pixels.shape[:2], 255, np.uint8) if transparent is None else np.where(transparent, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([pixels, alpha.astype(np.uint8)])).save(buffer, "PNG")
    return buffer.getvalue()

GPT_IMAGE_QUALITY = {"standard": "medium", "hd": "high"}
_POLICY_CODES = {"content_policy_violation", "moderation_blocked"}


def is_gpt_image(model: str) -> bool:
    return model.startswith(("gpt-image", "chatgpt-image"))


def _classify(reply: UpstreamReply, vendor: Vendor) -> ImageServeError | None:
    code = reply.error_field("code")
    if reply.status == 400 and code in _POLICY_CODES:
        return ContentPolicyViolation()
    if reply.status == 404 or code == "model_not_found":
        return UpstreamError(
            "OpenAI does not serve the configured upstream model (it may have been retired); "
            "map the model to a current one in IMAGESERVE_OPENAI_MODELS / [providers.openai] models.",
            code="upstream_model_not_found",
        )
    return None


class OpenAIImagesBackend(VendorBackend):
    provider = "openai"
    config: OpenAIProviderSettings

    def upstream_model(self) -> str:
        return self.config.models.get(self.spec.id, self.spec.id)

    def _client(self, vendor: Vendor) -> openai.AsyncOpenAI:
        config = self.config

        def build() -> openai.AsyncOpenAI:
            http = httpx2.AsyncClient(
                timeout=httpx2.Timeout(config.timeout_seconds),
                limits=httpx2.Limits(
                    max_connections=config.max_connections,
                    max_keepalive_connections=min(config.max_connections, 32),
                ),
            )
            return openai.AsyncOpenAI(
                api_key=vendor.api_key,
                base_url=config.base_url,
                max_retries=0,
                timeout=config.timeout_seconds,
                http_client=http,
            )

        return vendor.shared("openai-sdk", build, lambda client: client.close())

    def request_params(self, request: GenerationRequest) -> tuple[dict[str, Any], tuple[int, int]]:
        """The `images.generate` arguments for the upstream model, and the size asked of it."""
        model = self.upstream_model()
        params: dict[str, Any] = {"model": model, "prompt": request.prompt, "n": request.n}
        if request.user:
            params["user"] = request.user
        if is_gpt_image(model):
            size = nearest_size(request.width, request.height, GPT_IMAGE_SIZES)
            params["quality"] = GPT_IMAGE_QUALITY.get(request.quality, "auto")
            params["output_format"] = "png"
        else:
            table = {"dall-e-3": DALL_E_3_SIZES, "dall-e-2": DALL_E_2_SIZES}.get(model)
            size = (
                nearest_size(request.width, request.height, table)
                if table
                else (request.width, request.height)
            )
            params["response_format"] = self.config.response_format
            if model == "dall-e-3":
                params["quality"] = request.quality if request.quality in ("standard", "hd") else "standard"
                if request.style:
                    params["style"] = request.style
        params["size"] = f"{size[0]}x{size[1]}"
        return params, size

    @staticmethod
    def edit_params(request: GenerationRequest, params: dict[str, Any]) -> dict[str, Any]:
        """`images.edit` / `images.create_variation` arguments: the input as a PNG (its mask, as OpenAI wants it, a
        PNG whose transparent pixels mark where to edit), no `style` or `quality`."""
        edit = request.edit
        assert edit is not None
        gpt = is_gpt_image(params["model"])
        params = {k: v for k, v in params.items() if k != "style" and (gpt or k != "quality")}
        params["image"] = ("image.png", encode_rgba(edit.image), "image/png")
        if edit.references:
            if not gpt:
                raise InvalidRequest(f"{params['model']} edits one image; several need a GPT image model.",
                                     param="image")
            params["image"] = [params["image"], *(
                (f"reference-{index}.png", encode_rgba(pixels), "image/png")
                for index, pixels in enumerate(edit.references, start=1))]
        if edit.variation:
            params.pop("prompt", None)
        elif edit.mask is not None:
            params["mask"] = ("mask.png", encode_rgba(edit.image, transparent=edit.mask), "image/png")
        return params

    @staticmethod
    async def _consume_stream(stream: Any, request: GenerationRequest, vendor: Vendor, what: str) -> Any:
        """Read OpenAI's image stream: each partial image to `request.on_preview` (as pixels, re-encoded by our own
        stream in the client's format), the completed image as a one-image answer."""
        import io
        from types import SimpleNamespace

        import numpy as np
        from PIL import Image

        completed = None
        async for event in stream:
            kind = getattr(event, "type", "")
            if kind.endswith(".partial_image") and request.on_preview is not None:
                data = decode_b64(event.b64_json, vendor, what)
                with Image.open(io.BytesIO(data)) as preview:
                    request.on_preview(0, int(event.partial_image_index), np.asarray(preview.convert("RGB")))
            elif kind.endswith(".completed"):
                completed = SimpleNamespace(data=[SimpleNamespace(b64_json=event.b64_json)])
        if completed is None:
            raise vendor.malformed(what)
        return completed

    async def _generate(self, vendor: Vendor, request: GenerationRequest):
        client = self._client(vendor)
        params, _ = self.request_params(request)
        what = "image generation request"
        call = client.images.generate
        streamed = (request.on_preview is not None and request.partial_images > 0 and request.n == 1
                    and request.edit is None and is_gpt_image(params["model"]))
        if streamed:  # a GPT image model streams its own previews: passed on as they come
            params.update(stream=True, partial_images=request.partial_images)
        if request.edit is not None:
            params = self.edit_params(request, params)
            call = client.images.create_variation if request.edit.variation else client.images.edit
            what = "image variation request" if request.edit.variation else "image edit request"

        async def attempt() -> Any:
            try:
                if streamed:
                    return await self._consume_stream(await call(**params), request, vendor, what)
                return await call(**params)
            except openai.APITimeoutError:
                raise RetryableError(f"timed out after {self.config.timeout_seconds:g}s") from None
            except openai.APIConnectionError:
                raise RetryableError("connection failed") from None
            except openai.APIStatusError as exc:
                body = exc.body if isinstance(exc.body, dict) else None
                reply = UpstreamReply(
                    exc.status_code, exc.response.headers, {"error": body} if body else None
                )
                try:
                    vendor.raise_for_reply(reply, what, _classify)
                except ImageServeError as error:  # without the SDK's exception (and the vendor's body) as its context
                    raise error from None
                raise vendor.malformed(what) from None  # a non-error status the SDK still raised for
            except (openai.APIError, ValueError):  # a 2xx body the SDK could not read or validate
                raise vendor.malformed(what) from None

        async with vendor.slot():
            response = await vendor.retrying(what, attempt)
            items = getattr(response, "data", None)
            if not isinstance(items, list) or not items:
                raise vendor.malformed(what)
            images: list[tuple[GeneratedImage, tuple[int, int]]] = []
            for item in items:
                b64 = getattr(item, "b64_json", None)
                url = getattr(item, "url", None)
                if b64:
                    data = decode_b64(b64, vendor, what)
                elif isinstance(url, str) and url:
                    data = await vendor.download(url)
                else:
                    raise vendor.malformed(what)
                revised = getattr(item, "revised_prompt", None)
                images.append(
                    await self.image(vendor, data, revised_prompt=revised if isinstance(revised, str) else None)
                )
        return images, {"upstream_quality": params.get("quality")}

"""OpenAI Images API: `POST /v1/images/generations` with `Authorization: Bearer <key>`.

Follows the API reference for the three model families: DALL-E 2 (n 1-10, square sizes), DALL-E 3 (n=1,
three sizes, quality standard/hd, style), GPT image models (no `response_format` or `style`, sizes
1024x1024/1536x1024/1024x1536/auto, quality low/medium/high/auto, always base64). Errors use OpenAI's
`{"error": {"message", "type", "param", "code"}}`. A prompt containing "forbidden" is refused by the safety
system (`content_policy_violation`, or `moderation_blocked` for GPT image models).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.emulators.common import EmulatorBase, png

SIZES = {
    "dall-e-2": {"256x256", "512x512", "1024x1024"},
    "dall-e-3": {"1024x1024", "1792x1024", "1024x1792"},
    "gpt-image": {"1024x1024", "1536x1024", "1024x1536", "auto"},
}
KNOWN_PARAMS = {
    "dall-e-2": {"prompt", "model", "n", "size", "response_format", "user"},
    "dall-e-3": {"prompt", "model", "n", "size", "response_format", "user", "quality", "style"},
    "gpt-image": {
        "prompt",
        "model",
        "n",
        "size",
        "quality",
        "output_format",
        "output_compression",
        "background",
        "moderation",
        "user",
        "safety_identifier",
        "stream",
        "partial_images",
    },
}


def _png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


class OpenAIEmulator(EmulatorBase):
    def routes(self) -> list[Route]:
        return [Route("/v1/images/generations", self.generate, methods=["POST"]),
                Route("/v1/images/edits", self.edit, methods=["POST"]),
                Route("/v1/images/variations", self.variation, methods=["POST"])]

    @staticmethod
    def _stream(body: dict[str, Any], width: int, height: int, image: bytes) -> Response:
        """GPT image streaming: `partial_images` (0-3) partial events, then the completed one, as SSE."""
        partials = body.get("partial_images", 0)
        if not isinstance(partials, int) or not 0 <= partials <= 3:
            return OpenAIEmulator._error(400, "Invalid 'partial_images'.", param="partial_images")
        common = {"size": f"{width}x{height}", "output_format": "png", "quality": "auto", "background": "opaque",
                  "created_at": int(time.time())}
        events = [("image_generation.partial_image",
                   {**common, "b64_json": base64.b64encode(png(width, height, (10 * index, 0, 0))).decode(),
                    "partial_image_index": index}) for index in range(partials)]
        events.append(("image_generation.completed", {**common, "b64_json": base64.b64encode(image).decode(),
                                                      "usage": {"input_tokens": 10, "output_tokens": 100,
                                                                "total_tokens": 110, "input_tokens_details":
                                                                {"image_tokens": 0, "text_tokens": 10}}}))
        text = "".join(f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n" for name, data in events)
        return Response(text, media_type="text/event-stream")

    def _gpt_edit(self, fields: dict[str, Any], form_files: list[tuple[str, bytes]]) -> Response:
        """GPT image edits: up to 16 images (`image` or `image[]`), an optional mask (the first image's size), a
        prompt, GPT sizes and qualities, no `response_format`: always base64."""
        images = [data for name, data in form_files if name in ("image", "image[]")]
        if not 1 <= len(images) <= 16:
            return self._error(400, "Between 1 and 16 images are required.", param="image")
        if "response_format" in fields:
            return self._error(400, "Unknown parameter: 'response_format'.", param="response_format",
                               code="unknown_parameter")
        if not fields.get("prompt"):
            return self._error(400, "Missing required parameter: 'prompt'.", param="prompt")
        masks = [data for name, data in form_files if name == "mask"]
        if masks and _png_size(masks[0]) != _png_size(images[0]):
            return self._error(400, "Invalid mask image: must be the same size as the first image.", param="mask")
        size = fields.get("size", "auto")
        if size not in SIZES["gpt-image"]:
            return self._error(400, f"Invalid size '{size}'.", param="size", code="invalid_value")
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        data = [{"b64_json": base64.b64encode(png(width, height, (5, 150, 60))).decode()}
                for _ in range(int(fields.get("n", 1)))]
        return JSONResponse({"created": int(time.time()), "data": data, "size": f"{width}x{height}",
                             "output_format": "png", "quality": fields.get("quality", "auto"),
                             "usage": {"input_tokens": 10, "output_tokens": 100, "total_tokens": 110,
                                       "input_tokens_details": {"image_tokens": 5, "text_tokens": 5}}})

    async def edit(self, request: Request) -> Response:
        return await self._from_image(request, "edit")

    async def variation(self, request: Request) -> Response:
        return await self._from_image(request, "variation")

    async def _from_image(self, request: Request, route: str) -> Response:
        """dall-e-2 edits and variations, multipart: `image` a square PNG under 4 MB (RGBA for an edit without a
        mask), `mask` a PNG of the same size with transparency, `prompt` for edits, `n` 1-10, DALL-E 2 sizes.
        The answer is the generation's shape; the image is recorded (as bytes) for the tests."""
        rec, scripted = await self.record(route, request)  # scripted failures apply here too
        if scripted is not None:
            return scripted
        form = await request.form()
        fields = {name: value for name, value in form.multi_items() if not hasattr(value, "read")}
        form_files = [(name, await value.read()) for name, value in form.multi_items() if hasattr(value, "read")]
        files = dict(form_files)
        rec.body = {**fields, "files": files, "file_list": form_files}
        auth = request.headers.get("authorization", "")
        if auth[7:] != self.key:
            return self._error(401, "Incorrect API key provided.", code="invalid_api_key")
        model = fields.get("model", "dall-e-2")
        if model.startswith("gpt-image") and route == "edit":
            return self._gpt_edit(fields, form_files)
        if model != "dall-e-2":
            return self._error(400, "Invalid model.", param="model", code="invalid_value")
        image = files.get("image")
        if not image or not image.startswith(b"\x89PNG") or len(image) >= 4 * 1024 * 1024:
            return self._error(400, "Invalid input image - format must be in ['RGBA', 'LA', 'L'], got RGB.",
                               param="image", code="invalid_image_format")
        side = _png_size(image)
        if side[0] != side[1]:
            return self._error(400, "Uploaded image must be square.", param="image", code="invalid_value")
        if "mask" in files and _png_size(files["mask"]) != side:
            return self._error(400, "Invalid mask image: must be the same size as the image.", param="mask")
        if route == "edit" and not fields.get("prompt"):
            return self._error(400, "Missing required parameter: 'prompt'.", param="prompt")
        if route == "variation" and "prompt" in fields:
            return self._error(400, "Unknown parameter: 'prompt'.", param="prompt", code="unknown_parameter")
        n = int(fields.get("n", 1))
        size = fields.get("size", "1024x1024")
        if not 1 <= n <= 10 or size not in SIZES["dall-e-2"]:
            return self._error(400, "Invalid 'n' or 'size' for dall-e-2.", param="size")
        width, height = map(int, size.split("x"))
        data = [{"b64_json": base64.b64encode(png(width, height, (200, 80, 40))).decode()}
                if fields.get("response_format") == "b64_json" else {"url": self.host_file(png(width, height))}
                for _ in range(n)]
        return JSONResponse({"created": int(time.time()), "data": data})

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}

    @staticmethod
    def _error(
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status
        )

    async def generate(self, request: Request) -> Response:
        rec, scripted = await self.record("generate", request)
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:]:
            return self._error(401, "You didn't provide an API key.")
        if auth[7:] != self.key:
            return self._error(401, f"Incorrect API key provided: {auth[7:]}.", code="invalid_api_key")
        if scripted is not None:
            return scripted
        body = rec.body
        if not isinstance(body, dict):
            return self._error(400, "We could not parse the JSON body of your request.")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return self._error(
                400,
                "Missing required parameter: 'prompt'.",
                param="prompt",
                code="missing_required_parameter",
            )
        model = body.get("model", "dall-e-2")
        family = "gpt-image" if model.startswith("gpt-image") else model
        if family not in SIZES:
            return self._error(
                404, f"The model '{model}' does not exist.", param="model", code="model_not_found"
            )
        unknown = set(body) - KNOWN_PARAMS[family]
        if unknown:
            name = sorted(unknown)[0]
            return self._error(400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
        n = body.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= (1 if family == "dall-e-3" else 10):
            return self._error(400, f"Invalid 'n' for {model}.", param="n", code="invalid_value")
        size = body.get("size", "1024x1024")
        if size not in SIZES[family]:
            return self._error(400, f"Invalid size '{size}' for {model}.", param="size", code="invalid_value")
        quality = body.get("quality")
        allowed_quality = {"dall-e-3": {"standard", "hd"}, "gpt-image": {"low", "medium", "high", "auto"}}
        if quality is not None and quality not in allowed_quality.get(family, {"standard"}):
            return self._error(400, f"Invalid quality '{quality}'.", param="quality", code="invalid_value")
        if "style" in body and body["style"] not in ("vivid", "natural"):
            return self._error(400, "Invalid style.", param="style", code="invalid_value")
        response_format = body.get("response_format", "url")
        if response_format not in ("url", "b64_json"):
            return self._error(400, "Invalid response_format.", param="response_format", code="invalid_value")
        if "forbidden" in prompt:
            code = "moderation_blocked" if family == "gpt-image" else "content_policy_violation"
            return self._error(
                400,
                "Your request was rejected as a result of our safety system.",
                code=code,
                type_="image_generation_user_error",
            )

        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        image = png(width, height)
        if body.get("stream") is True:
            if family != "gpt-image":
                return self._error(400, "Streaming is only supported for GPT image models.", param="stream")
            return self._stream(body, width, height, image)
        data = []
        for _ in range(n):
            item: dict[str, Any] = {}
            if family == "gpt-image" or response_format == "b64_json":
                item["b64_json"] = base64.b64encode(image).decode()
            else:
                item["url"] = self.host_file(image)
            if family == "dall-e-3":
                item["revised_prompt"] = f"A detailed rendering of {prompt}"
            data.append(item)
        out: dict[str, Any] = {"created": int(time.time()), "data": data}
        if family == "gpt-image":
            out.update(
                output_format=body.get("output_format", "png"),
                size=f"{width}x{height}",
                quality=quality or "auto",
                usage={
                    "input_tokens": 10,
                    "output_tokens": 100,
                    "total_tokens": 110,
                    "input_tokens_details": {"image_tokens": 0, "text_tokens": 10},
                },
            )
        return JSONResponse(out)

"""Ideogram legacy generate: `POST /generate` with an `Api-Key` header and an `image_request` object.

Checks `prompt` (required), `model` (V_1, V_1_TURBO, V_2, V_2_TURBO, V_2A, V_2A_TURBO), `aspect_ratio` or
`resolution` (not both; resolution needs a 2.0 model), `num_images` 1-8, `magic_prompt_option`
AUTO/ON/OFF, `seed` 0-2147483647. Errors: 400 invalid input, 401 not authorized, 422 "Prompt failed the
safety check" (prompts containing "forbidden"), 429. "unsafe-image" flags the first image
(`is_image_safe: false`, no url); "all-unsafe" flags every image. MagicPrompt (unless OFF) rewrites the
prompt, and the rewrite is returned per image.

`POST /edit` ("Edit (legacy)" in Ideogram's API reference), recorded as route "edit": multipart with `image_file`,
`mask`, `prompt` and `model` required; `model` V_2 or V_2_TURBO only; `magic_prompt_option`, `num_images` 1-8,
`seed`, `style_type` optional; any other field is refused. Files are JPEG, PNG or WebP of at most 10 MB; the
mask is black and white (black = edit), the image's size, with something black to edit. Errors and answers are
the generation's (422 for "forbidden" prompts); the images come back at the input's size.
"""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime
from typing import Any

import numpy as np
from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.emulators.common import EmulatorBase, png

MODELS = {"V_1", "V_1_TURBO", "V_2", "V_2_TURBO", "V_2A", "V_2A_TURBO"}
EDIT_MODELS = {"V_2", "V_2_TURBO"}
EDIT_FIELDS = {"prompt", "model", "magic_prompt_option", "num_images", "seed", "style_type"}
STYLE_TYPES = {"AUTO", "GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME"}
MAX_FILE_BYTES = 10 * 1024 * 1024
ASPECTS = {
    "ASPECT_1_1": (1024, 1024),
    "ASPECT_16_9": (1312, 736),
    "ASPECT_9_16": (736, 1312),
    "ASPECT_4_3": (1152, 864),
    "ASPECT_3_4": (864, 1152),
    "ASPECT_3_2": (1248, 832),
    "ASPECT_2_3": (832, 1248),
    "ASPECT_16_10": (1280, 800),
    "ASPECT_10_16": (800, 1280),
    "ASPECT_1_3": (576, 1728),
    "ASPECT_3_1": (1728, 576),
}
# The `resolution` enum of Ideogram's `POST /generate` (V_2 models), written out as the vendor's API reference
# lists it (78 values), not derived from the product's table: `tests/vendors/test_size_tables.py` checks
# that `server.backends.vendors.sizes.IDEOGRAM_RESOLUTIONS` agrees, so a typo in either one fails.
RESOLUTION_ENUM = (
    "RESOLUTION_512_1536", "RESOLUTION_576_1408", "RESOLUTION_576_1472", "RESOLUTION_576_1536",
    "RESOLUTION_640_1024", "RESOLUTION_640_1344", "RESOLUTION_640_1408", "RESOLUTION_640_1472",
    "RESOLUTION_640_1536", "RESOLUTION_704_1152", "RESOLUTION_704_1216", "RESOLUTION_704_1280",
    "RESOLUTION_704_1344", "RESOLUTION_704_1408", "RESOLUTION_704_1472", "RESOLUTION_720_1280",
    "RESOLUTION_736_1312", "RESOLUTION_768_1024", "RESOLUTION_768_1088", "RESOLUTION_768_1152",
    "RESOLUTION_768_1216", "RESOLUTION_768_1232", "RESOLUTION_768_1280", "RESOLUTION_768_1344", "RESOLUTION_832_960",
    "RESOLUTION_832_1024", "RESOLUTION_832_1088", "RESOLUTION_832_1152", "RESOLUTION_832_1216",
    "RESOLUTION_832_1248", "RESOLUTION_864_1152", "RESOLUTION_896_960", "RESOLUTION_896_1024", "RESOLUTION_896_1088",
    "RESOLUTION_896_1120", "RESOLUTION_896_1152", "RESOLUTION_960_1024", "RESOLUTION_960_1088",
    "RESOLUTION_1024_1024", "RESOLUTION_960_832", "RESOLUTION_960_896", "RESOLUTION_1024_640", "RESOLUTION_1024_768",
    "RESOLUTION_1024_832", "RESOLUTION_1024_896", "RESOLUTION_1024_960", "RESOLUTION_1088_768",
    "RESOLUTION_1088_832", "RESOLUTION_1088_896", "RESOLUTION_1088_960", "RESOLUTION_1120_896",
    "RESOLUTION_1152_704", "RESOLUTION_1152_768", "RESOLUTION_1152_832", "RESOLUTION_1152_864",
    "RESOLUTION_1152_896", "RESOLUTION_1216_704", "RESOLUTION_1216_768", "RESOLUTION_1216_832",
    "RESOLUTION_1232_768", "RESOLUTION_1248_832", "RESOLUTION_1280_704", "RESOLUTION_1280_720",
    "RESOLUTION_1280_768", "RESOLUTION_1280_800", "RESOLUTION_1312_736", "RESOLUTION_1344_640",
    "RESOLUTION_1344_704", "RESOLUTION_1344_768", "RESOLUTION_1408_576", "RESOLUTION_1408_640",
    "RESOLUTION_1408_704", "RESOLUTION_1472_576", "RESOLUTION_1472_640", "RESOLUTION_1472_704",
    "RESOLUTION_1536_512", "RESOLUTION_1536_576", "RESOLUTION_1536_640",
)  # fmt: skip
RESOLUTIONS = {name: (int(name.split("_")[1]), int(name.split("_")[2])) for name in RESOLUTION_ENUM}


class IdeogramEmulator(EmulatorBase):
    def routes(self) -> list[Route]:
        return [Route("/generate", self.generate, methods=["POST"]), Route("/edit", self.edit, methods=["POST"])]

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": message}

    async def generate(self, request: Request) -> Response:
        rec, scripted = await self.record("generate", request)
        given = request.headers.get("api-key")
        if not given or given != self.key:
            return JSONResponse(
                {"error": f"Not authorized to generate an image (key {given})."}, status_code=401
            )
        if scripted is not None:
            return scripted
        body = rec.body
        req = body.get("image_request") if isinstance(body, dict) else None
        if not isinstance(req, dict):
            return JSONResponse({"error": "image_request is required"}, status_code=400)
        prompt = req.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return JSONResponse({"error": "image_request.prompt is required"}, status_code=400)
        model = req.get("model", "V_2")
        if model not in MODELS:
            return JSONResponse({"error": f"invalid model {model!r}"}, status_code=400)
        if "aspect_ratio" in req and "resolution" in req:
            return JSONResponse(
                {"error": "aspect_ratio and resolution cannot be used together"}, status_code=400
            )
        size = (1024, 1024)
        if "resolution" in req:
            if req["resolution"] not in RESOLUTIONS or not model.startswith("V_2"):
                return JSONResponse({"error": "invalid resolution"}, status_code=400)
            size = RESOLUTIONS[req["resolution"]]
        elif "aspect_ratio" in req:
            if req["aspect_ratio"] not in ASPECTS:
                return JSONResponse({"error": "invalid aspect_ratio"}, status_code=400)
            size = ASPECTS[req["aspect_ratio"]]
        n = req.get("num_images", 1)
        if not isinstance(n, int) or not 1 <= n <= 8:
            return JSONResponse({"error": "num_images must be between 1 and 8"}, status_code=400)
        magic = req.get("magic_prompt_option", "AUTO")
        if magic not in ("AUTO", "ON", "OFF"):
            return JSONResponse({"error": "invalid magic_prompt_option"}, status_code=400)
        seed = req.get("seed")
        if seed is not None and (not isinstance(seed, int) or not 0 <= seed <= 2147483647):
            return JSONResponse({"error": "seed must be between 0 and 2147483647"}, status_code=400)
        if "negative_prompt" in req and not isinstance(req["negative_prompt"], str):
            return JSONResponse({"error": "negative_prompt must be a string"}, status_code=400)
        if "forbidden" in prompt:
            return JSONResponse(
                {"error": "Prompt or provided image failed the safety checks"}, status_code=422
            )

        return self._answer(prompt, magic, n, size, seed)

    def _answer(self, prompt: str, magic: str, n: int, size: tuple[int, int], seed: int | None) -> Response:
        shown = prompt if magic == "OFF" else f"Magic: a striking, detailed image of {prompt}"
        data = []
        for i in range(n):
            unsafe = "all-unsafe" in prompt or ("unsafe-image" in prompt and i == 0)
            data.append(
                {
                    "url": None if unsafe else self.host_file(png(*size)),
                    "prompt": shown,
                    "resolution": f"{size[0]}x{size[1]}",
                    "is_image_safe": not unsafe,
                    "seed": (seed if seed is not None else random.randint(0, 2**31 - 1)),
                    "style_type": "AUTO",
                }
            )
        return JSONResponse({"created": datetime.now(UTC).isoformat(), "data": data})

    async def edit(self, request: Request) -> Response:
        rec, scripted = await self.record("edit", request)  # scripted failures apply here too
        given = request.headers.get("api-key")
        if not given or given != self.key:
            return JSONResponse({"error": f"Not authorized to edit an image (key {given})."}, status_code=401)
        if scripted is not None:
            return scripted
        try:
            form = await request.form()
        except Exception:  # not a multipart body
            return JSONResponse({"error": "a multipart/form-data body is required"}, status_code=400)
        fields = {name: value for name, value in form.multi_items() if isinstance(value, str)}
        files = {name: await value.read() for name, value in form.multi_items() if not isinstance(value, str)}
        rec.body = {**fields, "files": files}
        for name in sorted((set(fields) - EDIT_FIELDS) | (set(files) - {"image_file", "mask"})):
            return JSONResponse({"error": f"unknown field {name!r}"}, status_code=400)
        for name in ("image_file", "mask", "prompt", "model"):
            if not (files.get(name) if name in ("image_file", "mask") else fields.get(name)):
                return JSONResponse({"error": f"{name} is required"}, status_code=400)
        image, mask = _image(files["image_file"]), _image(files["mask"])
        if image is None or mask is None:
            return JSONResponse({"error": "image_file and mask must be JPEG, PNG or WebP of at most 10MB"},
                                status_code=400)
        if mask.size != image.size:
            return JSONResponse({"error": "the mask must be the size of the image"}, status_code=400)
        grey = np.asarray(mask.convert("L"))
        if not np.isin(grey, (0, 255)).all() or not (grey == 0).any():
            return JSONResponse({"error": "the mask must be black and white, black where to edit"}, status_code=400)
        if fields["model"] not in EDIT_MODELS:
            return JSONResponse({"error": "/edit supports only V_2 and V_2_TURBO"}, status_code=400)
        magic = fields.get("magic_prompt_option", "AUTO")
        if magic not in ("AUTO", "ON", "OFF") or fields.get("style_type", "AUTO") not in STYLE_TYPES:
            return JSONResponse({"error": "invalid magic_prompt_option or style_type"}, status_code=400)
        try:
            n = int(fields.get("num_images", "1"))
            seed = int(fields["seed"]) if "seed" in fields else None
        except ValueError:
            return JSONResponse({"error": "num_images and seed must be integers"}, status_code=400)
        if not 1 <= n <= 8 or (seed is not None and not 0 <= seed <= 2147483647):
            return JSONResponse({"error": "num_images must be 1-8 and seed 0-2147483647"}, status_code=400)
        if "forbidden" in fields["prompt"]:
            return JSONResponse({"error": "Prompt or Initial Image failed the safety checks"}, status_code=422)
        return self._answer(fields["prompt"], magic, n, image.size, seed)


def _image(data: bytes) -> Image.Image | None:
    """A whole JPEG, PNG or WebP image of at most 10 MB, else None."""
    if len(data) > MAX_FILE_BYTES:
        return None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError):
        return None
    return image if image.format in ("JPEG", "PNG", "WEBP") else None

"""Black Forest Labs API: `POST /v1/<endpoint>` then `GET` the returned `polling_url`, both with `x-key`.

FLUX1.1 [pro] inputs: `prompt`, `width`/`height` (multiples of 32 in [256, 1440]), `seed`, `safety_tolerance`
(0-6), `output_format` (jpeg/png), `prompt_upsampling`; unknown fields are refused (422, FastAPI-style
`detail`). A task stays `Pending` for `pending_polls` polls, then is `Ready` with `result.sample`, a link
served without a key. Prompts containing "forbidden" end `Request Moderated`; "unsafe-output" ends
`Content Moderated`; "task-error" ends `Error`. `polling_base` can point polling URLs at another host.

Edits follow BFL's API reference (docs.bfl.ai), recorded under their own routes so failures can be scripted:
- "fill", `POST /v1/flux-pro-1.0-fill`: `image` (required) and `mask` base64 images of the same size, the
  mask black and white (white = inpaint); without `mask` the image needs an alpha channel. `prompt` (default
  ""), `steps` 15-50, `guidance` 1.5-100, `seed`, `output_format`, `safety_tolerance`, `prompt_upsampling`,
  webhooks. The sample is the input's size.
- "kontext", `POST /v1/flux-kontext-pro` (and `-max`): `prompt` (required), `input_image` (and `_2`-`_4`) base64,
  `aspect_ratio` "W:H" between 21:9 and 9:21, `seed`, `output_format`, `safety_tolerance`,
  `prompt_upsampling`, webhooks. The sample is about one megapixel in that shape (1:1 without one).
Unknown fields, bad base64, images that do not decode and masks of another size are refused with 422.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.emulators.common import EmulatorBase, png

ENDPOINTS = {"flux-pro-1.1", "flux-pro", "flux-dev"}
FIELDS = {
    "prompt",
    "width",
    "height",
    "seed",
    "safety_tolerance",
    "output_format",
    "prompt_upsampling",
    "image_prompt",
    "webhook_url",
    "webhook_secret",
}
FILL_ENDPOINT = "flux-pro-1.0-fill"
FILL_FIELDS = {
    "image", "mask", "prompt", "steps", "prompt_upsampling", "seed", "guidance", "output_format",
    "safety_tolerance", "webhook_url", "webhook_secret",
}  # fmt: skip
KONTEXT_ENDPOINTS = {"flux-kontext-pro", "flux-kontext-max"}
KONTEXT_FIELDS = {
    "prompt", "input_image", "input_image_2", "input_image_3", "input_image_4", "seed", "aspect_ratio",
    "output_format", "webhook_url", "webhook_secret", "prompt_upsampling", "safety_tolerance",
}  # fmt: skip
_RATIO = re.compile(r"([1-9][0-9]*):([1-9][0-9]*)")


def decode_image(value: Any) -> Image.Image | None:
    """A base64 string that decodes to a whole image, else None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        image = Image.open(io.BytesIO(base64.b64decode(value, validate=True)))
        image.load()
    except (binascii.Error, ValueError, OSError):
        return None
    return image


@dataclass
class Task:
    id: str
    body: dict[str, Any]
    polls: int = 0
    final: str = "Ready"
    sample: str | None = None
    size: tuple[int, int] | None = None  # the sample's size, where it is not the body's width x height


@dataclass
class BFLEmulator(EmulatorBase):
    pending_polls: int = 2
    polling_base: str | None = None
    tasks: dict[str, Task] = field(default_factory=dict)

    def reset(self) -> None:
        super().reset()
        self.tasks.clear()
        self.pending_polls = 2
        self.polling_base = None

    def routes(self) -> list[Route]:
        return [
            Route("/v1/get_result", self.get_result, methods=["GET"]),
            Route("/v1/{endpoint}", self.submit, methods=["POST"]),
        ]

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"detail": message}

    def _auth(self, request: Request) -> Response | None:
        given = request.headers.get("x-key")
        if not given:
            return JSONResponse({"detail": "Not authenticated"}, status_code=403)
        if given != self.key:
            return JSONResponse({"detail": f"Invalid API key: {given}"}, status_code=403)
        return None

    @staticmethod
    def _invalid(loc: str, msg: str) -> JSONResponse:
        return JSONResponse(
            {"detail": [{"loc": ["body", loc], "msg": msg, "type": "value_error"}]}, status_code=422
        )

    async def submit(self, request: Request) -> Response:
        endpoint = request.path_params["endpoint"]
        route = "fill" if endpoint == FILL_ENDPOINT else "kontext" if endpoint in KONTEXT_ENDPOINTS else "submit"
        rec, scripted = await self.record(route, request)
        denied = self._auth(request)
        if denied is not None:
            return denied
        if scripted is not None:
            return scripted
        if route == "submit" and endpoint not in ENDPOINTS:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = rec.body
        if not isinstance(body, dict):
            return self._invalid("body", "a JSON object is required")
        if route != "submit":
            return self._edit(route, body)
        for name in set(body) - FIELDS:
            return self._invalid(name, "extra fields not permitted")
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return self._invalid("prompt", "field required")
        for side in ("width", "height"):
            value = body.get(side, 1024)
            if not isinstance(value, int) or not 256 <= value <= 1440 or value % 32:
                return self._invalid(side, "must be a multiple of 32 between 256 and 1440")
        if "safety_tolerance" in body and body["safety_tolerance"] not in range(7):
            return self._invalid("safety_tolerance", "must be between 0 and 6")
        if body.get("output_format", "jpeg") not in ("jpeg", "png"):
            return self._invalid("output_format", "must be jpeg or png")
        return self._start(Task(uuid.uuid4().hex, body))

    def _start(self, task: Task) -> Response:
        prompt = task.body.get("prompt") or ""
        if "forbidden" in prompt:
            task.final = "Request Moderated"
        elif "unsafe-output" in prompt:
            task.final = "Content Moderated"
        elif "task-error" in prompt:
            task.final = "Error"
        self.tasks[task.id] = task
        base = self.polling_base or self.base_url
        return JSONResponse({"id": task.id, "polling_url": f"{base}/v1/get_result?id={task.id}", "cost": 4.0})

    def _common(self, body: dict[str, Any], fields: set[str]) -> Response | None:
        """What Fill and Kontext check alike: known fields, `output_format`, `safety_tolerance`, `seed`."""
        for name in sorted(set(body) - fields):
            return self._invalid(name, "extra fields not permitted")
        if body.get("output_format") not in (None, "jpeg", "png"):
            return self._invalid("output_format", "must be jpeg or png")
        if "safety_tolerance" in body and body["safety_tolerance"] not in range(7):
            return self._invalid("safety_tolerance", "must be between 0 and 6")
        if body.get("seed") is not None and not isinstance(body["seed"], int):
            return self._invalid("seed", "must be an integer")
        if not isinstance(body.get("prompt", ""), str | None):
            return self._invalid("prompt", "must be a string")
        return None

    def _edit(self, route: str, body: dict[str, Any]) -> Response:
        refused = self._common(body, FILL_FIELDS if route == "fill" else KONTEXT_FIELDS)
        if refused is not None:
            return refused
        if route == "fill":
            image = decode_image(body.get("image"))
            if image is None:
                return self._invalid("image", "a base64-encoded image is required")
            if body.get("mask") is not None:
                mask = decode_image(body["mask"])
                if mask is None:
                    return self._invalid("mask", "must be a base64-encoded image")
                if mask.size != image.size:
                    return self._invalid("mask", "the mask must have the dimensions of the image")
            elif "A" not in image.getbands():
                return self._invalid("mask", "a mask is required unless the image has an alpha channel")
            steps, guidance = body.get("steps"), body.get("guidance")
            if steps is not None and (not isinstance(steps, int) or not 15 <= steps <= 50):
                return self._invalid("steps", "must be between 15 and 50")
            if guidance is not None and (not isinstance(guidance, int | float) or not 1.5 <= guidance <= 100):
                return self._invalid("guidance", "must be between 1.5 and 100")
            return self._start(Task(uuid.uuid4().hex, body, size=image.size))
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return self._invalid("prompt", "field required")
        for name in ("input_image", "input_image_2", "input_image_3", "input_image_4"):
            if body.get(name) is not None and decode_image(body[name]) is None:
                return self._invalid(name, "must be a base64-encoded image")
        ratio = body.get("aspect_ratio") or "1:1"
        match = _RATIO.fullmatch(ratio) if isinstance(ratio, str) else None
        if match is None or not 9 / 21 <= int(match[1]) / int(match[2]) <= 21 / 9:
            return self._invalid("aspect_ratio", "must be W:H between 21:9 and 9:21")
        shape = int(match[1]) / int(match[2])  # about one megapixel in that shape, sides on a 32 grid
        width = round(math.sqrt(1024 * 1024 * shape) / 32) * 32
        height = round(math.sqrt(1024 * 1024 / shape) / 32) * 32
        return self._start(Task(uuid.uuid4().hex, body, size=(width, height)))

    async def get_result(self, request: Request) -> Response:
        _, scripted = await self.record("poll", request)
        denied = self._auth(request)
        if denied is not None:
            return denied
        if scripted is not None:
            return scripted
        task = self.tasks.get(request.query_params.get("id", ""))
        if task is None:
            return JSONResponse(
                {"id": request.query_params.get("id"), "status": "Task not found", "result": None}
            )
        if task.final == "Request Moderated":
            return JSONResponse(
                {
                    "id": task.id,
                    "status": task.final,
                    "result": None,
                    "details": {"Moderation Reasons": ["Derivative Works Filter"]},
                }
            )
        task.polls += 1
        if task.polls <= self.pending_polls:
            return JSONResponse({"id": task.id, "status": "Pending", "result": None, "progress": 0.5})
        if task.final != "Ready":
            return JSONResponse({"id": task.id, "status": task.final, "result": None})
        if task.sample is None:
            width, height = task.size or (task.body.get("width", 1024), task.body.get("height", 768))
            task.sample = self.host_file(png(width, height))
        return JSONResponse(
            {
                "id": task.id,
                "status": "Ready",
                "result": {
                    "sample": task.sample,
                    "prompt": task.body.get("prompt", ""),
                    "seed": task.body.get("seed", 1234),
                    "start_time": 0.0,
                    "end_time": 1.0,
                    "duration": 1.0,
                },
                "progress": None,
            }
        )

    def active_polls(self) -> int:
        return len(self.calls("poll"))

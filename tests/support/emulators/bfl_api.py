"""Black Forest Labs API: `POST /v1/<endpoint>` then `GET` the returned `polling_url`, both with `x-key`.

FLUX1.1 [pro] inputs: `prompt`, `width`/`height` (multiples of 32 in [256, 1440]), `seed`, `safety_tolerance`
(0-6), `output_format` (jpeg/png), `prompt_upsampling`; unknown fields are refused (422, FastAPI-style
`detail`). A task stays `Pending` for `pending_polls` polls, then is `Ready` with `result.sample`, a link
served without a key. Prompts containing "forbidden" end `Request Moderated`; "unsafe-output" ends
`Content Moderated`; "task-error" ends `Error`. `polling_base` can point polling URLs at another host.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class Task:
    id: str
    body: dict[str, Any]
    polls: int = 0
    final: str = "Ready"
    sample: str | None = None


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
        rec, scripted = await self.record("submit", request)
        denied = self._auth(request)
        if denied is not None:
            return denied
        if scripted is not None:
            return scripted
        if request.path_params["endpoint"] not in ENDPOINTS:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = rec.body
        if not isinstance(body, dict):
            return self._invalid("body", "a JSON object is required")
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
        task = Task(uuid.uuid4().hex, body)
        prompt = body["prompt"]
        if "forbidden" in prompt:
            task.final = "Request Moderated"
        elif "unsafe-output" in prompt:
            task.final = "Content Moderated"
        elif "task-error" in prompt:
            task.final = "Error"
        self.tasks[task.id] = task
        base = self.polling_base or self.base_url
        return JSONResponse({"id": task.id, "polling_url": f"{base}/v1/get_result?id={task.id}", "cost": 4.0})

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
            width, height = task.body.get("width", 1024), task.body.get("height", 768)
            task.sample = self.host_file(png(width, height))
        return JSONResponse(
            {
                "id": task.id,
                "status": "Ready",
                "result": {
                    "sample": task.sample,
                    "prompt": task.body["prompt"],
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

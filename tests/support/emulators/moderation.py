"""OpenAI's moderation API: `POST /v1/moderations` with `Authorization: Bearer <key>`.

`{"input": str | [str, ...], "model": ...}` in, one result per input out (`flagged`, `categories`,
`category_scores`). An input containing `flag_word` (case-insensitive) is flagged as violence. A wrong or
missing key is a 401 in OpenAI's error format. Failures are scripted on the route "moderate" (`Fail(500)`,
`Hang(seconds)`, `Malformed()`), as for the vendor emulators; run it with `EmulatorServer`.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.emulators.common import EmulatorBase

DEFAULT_MODEL = "omni-moderation-latest"
CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence")


class ModerationEmulator(EmulatorBase):
    flag_word: str = "forbidden"

    def routes(self) -> list[Route]:
        return [Route("/v1/moderations", self.moderate, methods=["POST"])]

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}

    @staticmethod
    def _error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> JSONResponse:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
        return JSONResponse(body, status_code=status)

    def _result(self, text: str) -> dict[str, Any]:
        flagged = self.flag_word.lower() in text.lower()
        return {"flagged": flagged,
                "categories": {name: flagged and name == "violence" for name in CATEGORIES},
                "category_scores": {name: 0.97 if flagged and name == "violence" else 0.001 for name in CATEGORIES}}

    async def moderate(self, request: Request) -> Response:
        rec, scripted = await self.record("moderate", request)
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:]:
            return self._error(401, "You didn't provide an API key.")
        if auth[7:] != self.key:
            return self._error(401, "Incorrect API key provided.", code="invalid_api_key")
        if scripted is not None:
            return scripted
        body = rec.body
        inputs = body.get("input") if isinstance(body, dict) else None
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(text, str) for text in inputs):
            return self._error(400, "'input' must be a string or an array of strings.", param="input")
        model = body.get("model", DEFAULT_MODEL)
        return JSONResponse({"id": f"modr-{uuid.uuid4().hex[:24]}", "model": model,
                             "results": [self._result(text) for text in inputs]})

"""Gemini API (Generative Language API) image generation, key in the `x-goog-api-key` header.

- `POST /v1beta/models/<imagen model>:predict`: `instances: [{prompt}]`, `parameters: {sampleCount 1-4,
  aspectRatio 1:1|3:4|4:3|9:16|16:9, negativePrompt, personGeneration, includeRaiReason, ...}`; answers
  `predictions[].bytesBase64Encoded` + `mimeType`. Filtered images are dropped (or, with
  `includeRaiReason`, replaced by `{"raiFilteredReason": ...}`); everything filtered answers `{}`.
- `POST /v1beta/models/<gemini image model>:generateContent`: `contents[].parts[].text`,
  `generationConfig.responseModalities`, `generationConfig.imageConfig.aspectRatio`; answers
  `candidates[0].content.parts[].inlineData`.
Errors are Google's `{"error": {"code", "message", "status", "details"?}}`; a wrong key is 400
INVALID_ARGUMENT with reason API_KEY_INVALID, a missing key 403 PERMISSION_DENIED, a retired model 404.
Prompt markers: "forbidden" (refused), "filter-some" (only one image survives), "filter-all".
"""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.emulators.common import EmulatorBase, png

PREDICT_MODELS = {"imagen-3.0-generate-002", "imagen-4.0-generate-001"}
CONTENT_MODELS = {"gemini-3.1-flash-image", "gemini-2.5-flash-image"}
PARAMETERS = {
    "sampleCount",
    "aspectRatio",
    "negativePrompt",
    "personGeneration",
    "includeRaiReason",
    "safetySetting",
    "addWatermark",
    "outputOptions",
    "language",
    "enhancePrompt",
    "imageSize",
}
# Imagen on the Gemini API (`:predict`): the five `aspectRatio` values of Google's reference and the size each
# one produces (the Imagen 3 model card), written out here, not imported from the product's table:
# `tests/vendors/test_size_tables.py` checks that `server.backends.vendors.sizes.IMAGEN_RATIOS` agrees.
IMAGEN_RATIOS = {
    "1:1": (1024, 1024),
    "3:4": (896, 1280),
    "4:3": (1280, 896),
    "9:16": (768, 1408),
    "16:9": (1408, 768),
}
# Gemini image models (`:generateContent`, `imageConfig.aspectRatio`): the ten ratios of Google's reference and
# the 1K size of each; the product keeps only the ratio names (`GEMINI_IMAGE_RATIOS`), checked the same way.
GEMINI_RATIOS = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}
STATUS = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def google_error(code: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "status": STATUS.get(code, "UNKNOWN"), **extra}},
        status_code=code,
    )


class GoogleEmulator(EmulatorBase):
    def routes(self) -> list[Route]:
        return [Route("/v1beta/models/{target}", self.call, methods=["POST"])]

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": {"code": status, "message": message, "status": STATUS.get(status, "UNKNOWN")}}

    async def call(self, request: Request) -> Response:
        target = request.path_params["target"]
        model, _, method = target.partition(":")
        rec, scripted = await self.record(method or "unknown", request)
        given = request.headers.get("x-goog-api-key")
        if not given:
            return google_error(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity.",
            )
        if given != self.key:
            return google_error(
                400,
                f"API key not valid. Please pass a valid API key. ({given})",
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                    }
                ],
            )
        if scripted is not None:
            return scripted
        if method == "predict" and model in PREDICT_MODELS:
            return self.predict(rec.body)
        if method == "generateContent" and model in CONTENT_MODELS:
            return self.generate_content(rec.body)
        return google_error(
            404,
            f"models/{model} is not found for API version v1beta, or is not supported "
            f"for {method}. Call ListModels to see the list of available models.",
        )

    def predict(self, body: Any) -> Response:
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("instances"), list)
            or len(body["instances"]) != 1
        ):
            return google_error(400, "Invalid JSON payload: exactly one instance is required.")
        prompt = body["instances"][0].get("prompt") if isinstance(body["instances"][0], dict) else None
        if not isinstance(prompt, str) or not prompt:
            return google_error(400, "instances[0].prompt is required.")
        params = body.get("parameters", {})
        if not isinstance(params, dict):
            return google_error(400, "parameters must be an object.")
        for name in set(params) - PARAMETERS:
            return google_error(
                400, f"Invalid JSON payload received. Unknown name \"{name}\" at 'parameters'."
            )
        count = params.get("sampleCount", 4)
        if not isinstance(count, int) or not 1 <= count <= 4:
            return google_error(400, "sampleCount must be between 1 and 4.")
        ratio = params.get("aspectRatio", "1:1")
        if ratio not in IMAGEN_RATIOS:
            return google_error(400, f"Unsupported aspect ratio {ratio}.")
        if params.get("personGeneration", "allow_adult") not in ("dont_allow", "allow_adult", "allow_all"):
            return google_error(400, "Invalid personGeneration.")
        if "forbidden" in prompt:
            return google_error(
                400,
                "Image generation failed with the following error: The prompt could not be "
                "submitted. This prompt contains sensitive words that violate Google's "
                "Responsible AI practices.",
            )
        image = base64.b64encode(png(*IMAGEN_RATIOS[ratio])).decode()
        survivors = 0 if "filter-all" in prompt else 1 if "filter-some" in prompt else count
        predictions: list[dict[str, Any]] = [
            {"bytesBase64Encoded": image, "mimeType": "image/png"} for _ in range(survivors)
        ]
        if params.get("includeRaiReason") and survivors < count:
            predictions += [{"raiFilteredReason": "Filtered by the safety system."}] * (count - survivors)
        return JSONResponse({"predictions": predictions} if predictions else {})

    def generate_content(self, body: Any) -> Response:
        contents = body.get("contents") if isinstance(body, dict) else None
        try:
            prompt = contents[0]["parts"][0]["text"]  # type: ignore[index]
        except (TypeError, KeyError, IndexError):
            prompt = None
        if not isinstance(prompt, str) or not prompt:
            return google_error(400, "contents[0].parts[0].text is required.")
        config = body.get("generationConfig", {})
        modalities = config.get("responseModalities", ["TEXT"])
        if "IMAGE" not in modalities:
            return JSONResponse(
                {
                    "candidates": [
                        {"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP"}
                    ]
                }
            )
        ratio = config.get("imageConfig", {}).get("aspectRatio", "1:1")
        if ratio not in GEMINI_RATIOS:
            return google_error(400, f"Unsupported aspect ratio {ratio}.")
        if "forbidden" in prompt:
            return JSONResponse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}})
        if "filter-all" in prompt:
            return JSONResponse({"candidates": [{"finishReason": "IMAGE_SAFETY", "index": 0}]})
        data = base64.b64encode(png(*GEMINI_RATIOS[ratio])).decode()
        return JSONResponse(
            {
                "candidates": [
                    {
                        "content": {
                            "role": "model",
                            "parts": [{"inlineData": {"mimeType": "image/png", "data": data}}],
                        },
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "modelVersion": "emulated",
            }
        )

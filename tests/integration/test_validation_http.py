"""The validation table, rule by rule, accepted and rejected, through a real HTTP server.

"Accepted" means the request got past validation: a tiny local model answers 200, a vendor model
without a configured key answers 503 `model_unavailable` (it would have been forwarded).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

CHEAP = {"model": "tiny-flux", "size": "256x256", "num_inference_steps": 1, "response_format": "b64_json"}
SD3 = {**CHEAP, "model": "tiny-sd3"}

ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("minimal local", {"prompt": "a cat", **CHEAP}),
    ("prompt of 4000 chars", {**CHEAP, "prompt": "x" * 4000}),
    ("n at the model max", {**CHEAP, "prompt": "p", "n": 4}),
    ("custom size, multiples of 16", {**CHEAP, "prompt": "p", "size": "272x256"}),
    ("listed size of a custom model", {**CHEAP, "prompt": "p", "size": "1024x1024", "num_inference_steps": 1}),
    ("quality standard anywhere", {**CHEAP, "prompt": "p", "quality": "standard"}),
    ("response_format url", {**CHEAP, "prompt": "p", "response_format": "url"}),
    ("user", {**CHEAP, "prompt": "p", "user": "team-a"}),
    ("output_format jpeg + compression", {**CHEAP, "prompt": "p", "output_format": "jpeg", "output_compression": 50}),
    ("output_format webp", {**CHEAP, "prompt": "p", "output_format": "webp"}),
    ("seed bounds", {**CHEAP, "prompt": "p", "seed": 2**32 - 1}),
    ("seed zero", {**CHEAP, "prompt": "p", "seed": 0}),
    ("steps at 1", {**CHEAP, "prompt": "p", "num_inference_steps": 1}),
    ("guidance 0 and int", {**CHEAP, "prompt": "p", "guidance_scale": 0}),
    ("guidance 30.0", {**CHEAP, "prompt": "p", "guidance_scale": 30.0}),
    ("negative prompt on sd3", {**SD3, "prompt": "p", "negative_prompt": "blurry"}),
    ("explicit nulls are defaults", {**CHEAP, "prompt": "p", "n": None, "quality": None}),
    ("default model from settings", {"prompt": "p", "size": "256x256", "num_inference_steps": 1}),
    ("dall-e-3 hd vivid 1792x1024", {"prompt": "p", "model": "dall-e-3", "quality": "hd", "style": "natural",
                                     "size": "1792x1024"}),
    ("dall-e-2 n=10 at 256", {"prompt": "p", "model": "dall-e-2", "n": 10, "size": "256x256"}),
    ("flux-pro custom size + seed", {"prompt": "p", "model": "flux-pro", "size": "2048x256", "seed": 7}),
    ("ideogram negative prompt", {"prompt": "p", "model": "ideogram-2", "negative_prompt": "text"}),
    ("imagen-3 n=4", {"prompt": "p", "model": "imagen-3", "n": 4}),
]

REJECTED: list[tuple[str, Any, str | None]] = [
    ("missing prompt", {"model": "tiny-flux"}, "prompt"),
    ("empty prompt", {"prompt": ""}, "prompt"),
    ("prompt too long", {"prompt": "x" * 4001}, "prompt"),
    ("prompt not a string", {"prompt": ["a"]}, "prompt"),
    ("unknown model", {"prompt": "p", "model": "dall-e-9"}, "model"),
    ("empty model", {"prompt": "p", "model": ""}, "model"),
    ("model not a string", {"prompt": "p", "model": 3}, "model"),
    ("n zero", {"prompt": "p", "model": "tiny-flux", "n": 0}, "n"),
    ("n over the model max", {"prompt": "p", "model": "tiny-flux", "n": 5}, "n"),
    ("n=2 on dall-e-3", {"prompt": "p", "model": "dall-e-3", "n": 2}, "n"),
    ("n as a string", {"prompt": "p", "n": "2"}, "n"),
    ("n as a float", {"prompt": "p", "n": 1.5}, "n"),
    ("size garbage", {"prompt": "p", "model": "tiny-flux", "size": "big"}, "size"),
    ("size with a trailing newline", {"prompt": "p", "model": "tiny-flux", "size": "512x512\n"}, "size"),
    ("size not multiple of 16", {"prompt": "p", "model": "tiny-flux", "size": "260x256"}, "size"),
    ("size in non-ASCII digits", {"prompt": "p", "model": "tiny-flux", "size": "\u0661\u0660\u0662\u0664x256"},
     "size"),
    ("size too small", {"prompt": "p", "model": "tiny-flux", "size": "240x256"}, "size"),
    ("size too large", {"prompt": "p", "model": "tiny-flux", "size": "2064x256"}, "size"),
    ("unlisted size on a fixed-size model", {"prompt": "p", "model": "dall-e-3", "size": "512x512"}, "size"),
    ("custom size on imagen-3", {"prompt": "p", "model": "imagen-3", "size": "512x512"}, "size"),
    ("quality hd on a local model", {"prompt": "p", "model": "tiny-flux", "quality": "hd"}, "quality"),
    ("quality hd on dall-e-2", {"prompt": "p", "model": "dall-e-2", "quality": "hd"}, "quality"),
    ("quality unknown", {"prompt": "p", "model": "dall-e-3", "quality": "ultra"}, "quality"),
    ("style on a local model", {"prompt": "p", "model": "tiny-flux", "style": "vivid"}, "style"),
    ("style on dall-e-2", {"prompt": "p", "model": "dall-e-2", "style": "natural"}, "style"),
    ("style unknown", {"prompt": "p", "model": "dall-e-3", "style": "anime"}, "style"),
    ("response_format unknown", {"prompt": "p", "response_format": "png"}, "response_format"),
    ("output_format unknown", {"prompt": "p", "output_format": "gif"}, "output_format"),
    ("output_compression over 100", {"prompt": "p", "output_compression": 101}, "output_compression"),
    ("negative prompt on flux", {"prompt": "p", "model": "tiny-flux", "negative_prompt": "x"}, "negative_prompt"),
    ("negative prompt on dall-e-3", {"prompt": "p", "model": "dall-e-3", "negative_prompt": "x"},
     "negative_prompt"),
    ("seed negative", {"prompt": "p", "model": "tiny-flux", "seed": -1}, "seed"),
    ("seed over 2**32-1", {"prompt": "p", "model": "tiny-flux", "seed": 2**32}, "seed"),
    ("seed on dall-e-3", {"prompt": "p", "model": "dall-e-3", "seed": 1}, "seed"),
    ("steps zero", {"prompt": "p", "model": "tiny-flux", "num_inference_steps": 0}, "num_inference_steps"),
    ("steps over 100", {"prompt": "p", "model": "tiny-flux", "num_inference_steps": 101}, "num_inference_steps"),
    ("steps on a vendor model", {"prompt": "p", "model": "flux-pro", "num_inference_steps": 10},
     "num_inference_steps"),
    ("guidance negative", {"prompt": "p", "model": "tiny-flux", "guidance_scale": -0.5}, "guidance_scale"),
    ("guidance over 30", {"prompt": "p", "model": "tiny-flux", "guidance_scale": 30.5}, "guidance_scale"),
    ("guidance a string", {"prompt": "p", "model": "tiny-flux", "guidance_scale": "7"}, "guidance_scale"),
    ("guidance on ideogram", {"prompt": "p", "model": "ideogram-2", "guidance_scale": 3}, "guidance_scale"),
    ("unknown field", {"prompt": "p", "temperature": 0.7}, "temperature"),
    ("user not a string", {"prompt": "p", "user": 5}, "user"),
]


def _post(server, body: Any, auth: dict[str, str], **kw: Any) -> httpx.Response:
    return httpx.post(server.api_url + "/images/generations", json=body, headers=auth, timeout=120, **kw)


@pytest.mark.parametrize(("case", "body"), ACCEPTED, ids=[case for case, _ in ACCEPTED])
def test_accepted(server, auth, case: str, body: dict[str, Any]) -> None:
    response = _post(server, body, auth)
    if body.get("model", "tiny-flux").startswith("tiny"):
        assert response.status_code == 200, response.text
        assert len(response.json()["data"]) == (body.get("n") or 1)
    else:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["type"] == "model_unavailable"


@pytest.mark.parametrize(("case", "body", "param"), REJECTED, ids=[case for case, _, _ in REJECTED])
def test_rejected_with_400_naming_the_parameter(server, auth, case: str, body: Any, param: str) -> None:
    response = _post(server, body, auth)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert error["param"] == param
    assert error["message"] and "Traceback" not in error["message"]
    assert {"message", "type", "param", "code"} <= set(error)  # OpenAI's shape: null where not applicable


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [(b"{not json", "application/json"), (b"[1, 2]", "application/json"), (b'"a prompt"', "application/json"),
     (b"", "application/json"), (b"\xff\xfe", "application/json"), (b"prompt=a", "application/x-www-form-urlencoded"),
     (b"[" * 100_000, "application/json"), (b'{"prompt": ' + b"[" * 50_000, "application/json"),
     (b'{"prompt": "p", "n": ' + b"9" * 5000 + b"}", "application/json")],  # over Python's 4300-digit limit
)
def test_malformed_bodies_get_400_in_the_error_shape(server, auth, raw: bytes, content_type: str) -> None:
    response = httpx.post(server.api_url + "/images/generations", content=raw,
                          headers={**auth, "Content-Type": content_type}, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request" and set(error) == {"message", "type", "param", "code"}


def test_never_fastapi_422_even_on_other_routes(server, auth) -> None:
    response = httpx.get(server.api_url + "/images/files/not-a-file.png", headers=auth)
    assert response.status_code in (403, 404)
    assert set(response.json()) == {"error"}
    response = httpx.get(server.base_url + "/no/such/route")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"
    assert response.json()["error"]["param"] is None and response.json()["error"]["code"] is None
    response = httpx.get(server.api_url + "/images/generations")
    assert response.status_code == 405 and "error" in response.json()


def test_openapi_documents_the_request_body(server) -> None:
    spec = httpx.get(server.base_url + "/openapi.json").json()
    schema = spec["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["prompt"] and schema["additionalProperties"] is False
    assert {"negative_prompt", "seed", "num_inference_steps", "guidance_scale"} <= set(schema["properties"])

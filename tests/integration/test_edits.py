"""`POST /v1/images/edits` and `/variations` through a real server, with the official `openai` client and raw
multipart: image-to-image, inpainting and variations on the tiny and simulated models, batching, determinism,
and every rejected upload (a clear 4xx naming the field, nothing billed, the server still serving)."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from PIL import Image

from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.server_harness import RunningServer, running_server

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
SIM = {"kind": "simulated", "time_scale": 0.001, "sizes": ["256x256"], "custom_sizes": True, "price_usd": 0.01,
       "extra_params": ["seed", "num_inference_steps"]}


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def photo(width: int = 320, height: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def hole_mask(width: int = 320, height: int = 256) -> bytes:
    """Opaque everywhere but a transparent 64x64 square at (64, 64): edit only there."""
    alpha = np.full((height, width), 255, np.uint8)
    alpha[64:128, 64:128] = 0
    return png(np.dstack([np.zeros((height, width, 3), np.uint8), alpha]))


def decoded(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


@pytest.fixture(scope="module")
def edit_server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[RunningServer]:
    with running_server(data_dir=tmp_path_factory.mktemp("edits"), model_cache=model_cache, api_keys=TEST_KEYS,
                        models={"sim": SIM}, default_model="sim", batch_wait_ms=300, max_upload_bytes=400_000,
                        max_image_pixels=500_000) as server:
        yield server


@pytest.fixture
def client(edit_server: RunningServer) -> OpenAI:
    return OpenAI(base_url=edit_server.api_url, api_key=TEST_KEY, max_retries=0)


def test_an_edit_without_a_mask_redraws_the_input_at_its_own_size(client: OpenAI) -> None:
    source = photo()
    first = client.images.edit(model="sim", image=("in.png", png(source), "image/png"), prompt="a fox",
                               response_format="b64_json", extra_body={"seed": 5, "strength": 0.5})
    again = client.images.edit(model="sim", image=("in.png", png(source), "image/png"), prompt="a fox",
                               response_format="b64_json", extra_body={"seed": 5, "strength": 0.5})
    stronger = client.images.edit(model="sim", image=("in.png", png(source), "image/png"), prompt="a fox",
                                  response_format="b64_json", extra_body={"seed": 5, "strength": 0.9})
    out = decoded(first.data[0].b64_json)
    assert out.shape == (256, 320, 3) and first.model_extra["perf"]["size"] == "320x256"
    assert np.array_equal(out, decoded(again.data[0].b64_json))  # same seed, same image
    moved, moved_more = (np.abs(x.astype(int) - source).mean() for x in (out, decoded(stronger.data[0].b64_json)))
    assert 0 < moved < moved_more  # the strength says how far from the input


def test_a_mask_limits_the_edit_to_its_transparent_pixels(client: OpenAI) -> None:
    source = photo()
    response = client.images.edit(model="sim", image=("in.png", png(source), "image/png"),
                                  mask=("mask.png", hole_mask(), "image/png"), prompt="a fox", n=2,
                                  response_format="b64_json", extra_body={"seed": 1, "strength": 1.0})
    assert len(response.data) == 2
    for item in response.data:
        out = decoded(item.b64_json)
        inside, outside = np.zeros(out.shape[:2], bool), np.ones(out.shape[:2], bool)
        inside[64:128, 64:128], outside[64:128, 64:128] = True, False
        assert np.array_equal(out[outside], source[outside])  # untouched where the mask is opaque
        assert not np.array_equal(out[inside], source[inside])


def test_an_image_with_transparent_pixels_is_its_own_mask(client: OpenAI) -> None:
    source = photo()
    alpha = np.full(source.shape[:2], 255, np.uint8)
    alpha[0:32, 0:32] = 0
    response = client.images.edit(model="sim", image=("in.png", png(np.dstack([source, alpha])), "image/png"),
                                  prompt="a fox", response_format="b64_json", extra_body={"strength": 1.0})
    out = decoded(response.data[0].b64_json)
    assert np.array_equal(out[64:, 64:], source[64:, 64:]) and not np.array_equal(out[:32, :32], source[:32, :32])


def test_variations_take_no_prompt_and_concurrent_edits_share_batches(edit_server: RunningServer) -> None:
    async def both() -> tuple[list, object]:
        client = AsyncOpenAI(base_url=edit_server.api_url, api_key=TEST_KEY, max_retries=0)
        try:
            edits = await asyncio.gather(*(client.images.edit(
                model="sim", image=("in.png", png(photo(seed=i)), "image/png"), prompt=f"fox {i}",
                response_format="b64_json", extra_body={"seed": i}) for i in range(4)))
            variation = await client.images.create_variation(
                model="sim", image=("in.png", png(photo()), "image/png"), n=2, response_format="url")
        finally:
            await client.close()
        return edits, variation

    edits, variation = asyncio.run(both())
    assert max(e.model_extra["perf"]["batch_size"] for e in edits) > 1  # compatible edits batch together
    assert len(variation.data) == 2
    fetched = httpx.get(variation.data[0].url)
    assert fetched.status_code == 200 and Image.open(io.BytesIO(fetched.content)).size == (320, 256)


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
def test_the_tiny_models_edit_inpaint_and_vary_through_diffusers(edit_server: RunningServer, model: str) -> None:
    client = OpenAI(base_url=edit_server.api_url, api_key=TEST_KEY, max_retries=0)
    source = png(photo())
    common = {"num_inference_steps": 2, "seed": 11}
    edited = client.images.edit(model=model, image=("in.png", source, "image/png"), prompt="a cube",
                                response_format="b64_json", extra_body=common)
    again = client.images.edit(model=model, image=("in.png", source, "image/png"), prompt="a cube",
                               response_format="b64_json", extra_body=common)
    mask = ("mask.png", hole_mask(), "image/png")
    if model == "tiny-sd3":  # its 4-channel test VAE cannot inpaint: refused before any work
        with pytest.raises(openai.BadRequestError, match="cannot inpaint"):
            client.images.edit(model=model, image=("in.png", source, "image/png"), prompt="a cube", mask=mask)
        inpainted = client.images.edit(model=model, image=("in.png", source, "image/png"), prompt="another",
                                       response_format="b64_json", extra_body=common)
    else:
        inpainted = client.images.edit(model=model, image=("in.png", source, "image/png"), prompt="a cube",
                                       mask=mask, response_format="b64_json", extra_body=common)
    varied = client.images.create_variation(model=model, image=("in.png", source, "image/png"),
                                            response_format="b64_json", extra_body=common)
    images = [decoded(r.data[0].b64_json) for r in (edited, again, inpainted, varied)]
    assert all(image.shape == (256, 320, 3) for image in images)
    assert np.array_equal(images[0], images[1])  # deterministic per seed
    assert not np.array_equal(images[0], images[2])  # inpainting (another pipeline), or another prompt
    assert edited.model_extra["perf"]["model_used"] == model


def _post(server: RunningServer, path: str, files: dict, data: dict | None = None) -> httpx.Response:
    return httpx.post(server.api_url + path, headers=AUTH, files=files, data=data or {}, timeout=60)


@pytest.mark.parametrize(("files", "data", "status", "param"), [
    ({}, {"prompt": "x", "model": "sim"}, 400, "image"),
    ({"image": ("a.png", b"not an image", "image/png")}, {"prompt": "x", "model": "sim"}, 400, "image"),
    ({"image": ("a.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif")}, {"prompt": "x", "model": "sim"},
     400, "image"),
    ({"image": ("a.png", png(photo()), "image/png"), "mask": ("m.png", png(photo(64, 64)), "image/png")},
     {"prompt": "x", "model": "sim"}, 400, "mask"),
    ({"image": ("a.png", png(photo()), "image/png"), "mask": ("m.png", png(photo()), "image/png")},
     {"prompt": "x", "model": "sim"}, 400, "mask"),  # no alpha channel
    ({"image": ("a.png", png(np.zeros((600, 1000, 3), np.uint8)), "image/png")},  # 600,000 pixels in a few KB
     {"prompt": "x", "model": "sim"}, 400, "image"),
    ({"image": ("a.png", np.random.bytes(500_000), "image/png")}, {"prompt": "x", "model": "sim"}, 413, "image"),
    ({"image": ("a.png", png(photo()), "image/png")}, {"prompt": "x", "model": "sim", "n": "two"}, 400, "n"),
    ({"image": ("a.png", png(photo()), "image/png")}, {"prompt": "x", "model": "sim", "strength": "1.5"}, 400,
     "strength"),
    ({"image": ("a.png", png(photo()), "image/png")}, {"prompt": "x", "model": "dall-e-3"}, 400, "model"),
    ({"image": ("a.png", png(photo()), "image/png")}, {"prompt": "x", "model": "sim", "stream": "maybe"}, 400,
     "stream"),
    ({"image": ("a.png", png(photo()), "image/png")}, {"model": "sim"}, 400, "prompt"),
])
def test_bad_uploads_are_a_clear_4xx_naming_the_field(edit_server: RunningServer, files: dict, data: dict,
                                                      status: int, param: str) -> None:
    before = httpx.get(edit_server.api_url + "/usage", headers=AUTH).json()["total"]
    response = _post(edit_server, "/images/edits", files, data)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert httpx.get(edit_server.api_url + "/usage", headers=AUTH).json()["total"]["images"] == before["images"]


def test_variations_refuse_a_prompt_and_a_mask_and_json_is_not_multipart(edit_server: RunningServer) -> None:
    image = {"image": ("a.png", png(photo()), "image/png")}
    prompt = _post(edit_server, "/images/variations", image, {"prompt": "x", "model": "sim"})
    assert prompt.status_code == 400 and prompt.json()["error"]["param"] == "prompt"
    masked = _post(edit_server, "/images/variations", {**image, "mask": ("m.png", hole_mask(), "image/png")},
                   {"model": "sim"})
    assert masked.status_code == 400 and masked.json()["error"]["param"] == "mask"
    as_json = httpx.post(edit_server.api_url + "/images/edits", headers=AUTH, json={"prompt": "x"})
    assert as_json.status_code == 400 and as_json.json()["error"]["param"] == "image"
    with pytest.raises(openai.BadRequestError):
        OpenAI(base_url=edit_server.api_url, api_key=TEST_KEY, max_retries=0).images.create_variation(
            model="flux-pro", image=("a.png", png(photo()), "image/png"))  # BFL has no variations
    assert _post(edit_server, "/images/edits", image, {"prompt": "x", "model": "sim"}).status_code == 200

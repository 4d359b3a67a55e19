"""flux-pro edits forwarded to Black Forest Labs through a real server and the official client: with a mask to
FLUX.1 Fill [pro] (the mask white where to repaint), without one to FLUX.1 Kontext [pro]; both polled like
generations and priced like them. BFL has no variations: refused with a 400 naming `model`, nothing upstream."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from PIL import Image

from pipelines.types import GenerationRequest, ImageEdit
from server.errors import InvalidRequest
from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.edit_images import photo as noise_photo
from tests.support.edit_images import png, quarter_mask
from tests.support.emulators.bfl_api import BFLEmulator
from tests.support.emulators.common import Fail
from tests.support.server_harness import RunningServer, running_server
from tests.vendors.conftest import FAST, KEYS, make_settings

KEY = KEYS["bfl"]


def photo(width: int, height: int):  # noqa: ANN201 - an image array
    return noise_photo(width, height, seed=3)


def decoded(value: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(value, validate=True)))
    assert image.format == "PNG"
    return image


@pytest.fixture(scope="module")
def server(_bfl_server: BFLEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    providers = {"bfl": {"api_key": KEY, "base_url": _bfl_server.base_url, "poll_interval_seconds": 0.01, **FAST}}
    with running_server(data_dir=tmp_path_factory.mktemp("bfl-edits"), api_keys=TEST_KEYS,
                        providers=providers) as running:
        yield running


@pytest.fixture
def client(server: RunningServer, bfl_emu: BFLEmulator) -> OpenAI:
    return OpenAI(base_url=server.api_url, api_key=TEST_KEY, max_retries=0)


def test_an_edit_with_a_mask_goes_to_fill_with_the_mask_white_where_to_repaint(client: OpenAI,
                                                                              bfl_emu: BFLEmulator) -> None:
    source = photo(512, 384)
    response = client.images.edit(model="flux-pro", image=("a.png", png(source), "image/png"),
                                  mask=("m.png", quarter_mask(512, 384), "image/png"), prompt="a red hat", n=2,
                                  response_format="b64_json", extra_body={"seed": 7})
    assert len(response.data) == 2
    perf = response.model_extra["perf"]
    assert perf["cost_usd"] == pytest.approx(0.11) and perf["size"] == "512x384"  # as a generation: per image
    assert perf["upstream_model"] == "flux-pro-1.0-fill"
    fills = bfl_emu.calls("fill")
    assert len(fills) == 2 and not bfl_emu.calls("kontext") and not bfl_emu.calls("submit")
    assert all(call.path == "/v1/flux-pro-1.0-fill" and call.headers["x-key"] == KEY for call in fills)
    assert sorted(call.body["seed"] for call in fills) == [7, 8]
    body = fills[0].body
    assert set(body) == {"prompt", "image", "mask", "output_format", "seed"} and body["prompt"] == "a red hat"
    sent = decoded(body["image"])
    assert sent.size == (512, 384) and sent.mode == "RGB"
    assert np.abs(np.asarray(sent).astype(int) - source).mean() < 2  # the input itself, at the request's size
    mask = np.asarray(decoded(body["mask"]).convert("L"))
    assert mask.shape == (384, 512) and set(np.unique(mask)) == {0, 255}
    assert (mask[:180, :250] == 255).all() and (mask[200:, :] == 0).all() and (mask[:, 260:] == 0).all()
    assert len(bfl_emu.calls("poll")) == 6  # polled like generations: two Pending answers, then Ready


def test_an_edit_without_a_mask_goes_to_kontext_with_the_nearest_aspect_ratio(client: OpenAI,
                                                                             bfl_emu: BFLEmulator) -> None:
    source = photo(512, 384)
    response = client.images.edit(model="flux-pro", image=("a.png", png(source), "image/png"),
                                  prompt="make it snow", response_format="url")
    (call,) = bfl_emu.calls("kontext")
    assert call.path == "/v1/flux-kontext-pro" and not bfl_emu.calls("fill") and not bfl_emu.calls("submit")
    assert set(call.body) == {"prompt", "input_image", "aspect_ratio", "output_format"}
    assert call.body["aspect_ratio"] == "4:3" and call.body["prompt"] == "make it snow"
    sent = decoded(call.body["input_image"])
    assert sent.size == (512, 384) and np.abs(np.asarray(sent).astype(int) - source).mean() < 2
    perf = response.model_extra["perf"]
    assert perf["size"] == "1184x896" and perf["cost_usd"] == pytest.approx(0.055)  # Kontext's ~1 MP, 4:3
    assert perf["upstream_model"] == "flux-kontext-pro"
    image = Image.open(io.BytesIO(httpx.get(response.data[0].url).content))
    assert image.size == (1184, 896)


def test_variations_are_refused_before_anything_goes_upstream(client: OpenAI, bfl_emu: BFLEmulator) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.create_variation(model="flux-pro", image=("a.png", png(photo(256, 256)), "image/png"))
    assert raised.value.body["param"] == "model" and "variation" in raised.value.body["message"]
    assert bfl_emu.requests == []


def test_vendor_errors_map_as_for_generations(client: OpenAI, bfl_emu: BFLEmulator) -> None:
    image = ("a.png", png(photo(256, 256)), "image/png")
    mask = ("m.png", quarter_mask(256, 256), "image/png")
    bfl_emu.script("fill", Fail(429, retry_after="12"))
    with pytest.raises(openai.RateLimitError) as limited:
        client.images.edit(model="flux-pro", image=image, mask=mask, prompt="a hat")
    assert limited.value.response.headers["retry-after"] == "12"
    bfl_emu.script("kontext", *[Fail(503)] * 3)
    with pytest.raises(openai.APIStatusError) as unavailable:
        client.images.edit(model="flux-pro", image=image, prompt="a hat")
    assert unavailable.value.status_code == 502 and len(bfl_emu.calls("kontext")) == 3
    assert KEY not in str(unavailable.value.body)
    with pytest.raises(openai.BadRequestError) as moderated:  # the task ends `Request Moderated`
        client.images.edit(model="flux-pro", image=image, mask=mask, prompt="something forbidden")
    assert moderated.value.body["code"] == "content_policy_violation"
    with pytest.raises(openai.APIStatusError) as failed:
        client.images.edit(model="flux-pro", image=image, prompt="task-error")
    assert failed.value.status_code == 502 and failed.value.body["code"] == "upstream_task_failed"


def _edit_request(mask: np.ndarray | None, **fields: object) -> GenerationRequest:
    edit = ImageEdit(photo(256, 256), mask)
    return GenerationRequest(request_id="req_edit", model="flux-pro", prompt="a hat", n=1, width=256, height=256,
                             edit=edit, **fields)  # type: ignore[arg-type]


async def test_fill_takes_steps_and_guidance_within_bfls_ranges(bfl_emu, backends) -> None:
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url, safety_tolerance=2))
    mask = np.zeros((256, 256), bool)
    mask[100:150, 100:150] = True
    await backend.generate(_edit_request(mask, num_inference_steps=30, guidance_scale=40.0))
    (call,) = bfl_emu.calls("fill")
    assert (call.body["steps"], call.body["guidance"], call.body["safety_tolerance"]) == (30, 40.0, 2)
    sent = np.asarray(decoded(call.body["mask"]).convert("L"))
    assert (sent[100:150, 100:150] == 255).all() and sent.sum() == 255 * 50 * 50
    for fields, param in (({"num_inference_steps": 60}, "num_inference_steps"),
                          ({"guidance_scale": 1.0}, "guidance_scale")):
        with pytest.raises(InvalidRequest) as refused:
            await backend.generate(_edit_request(mask, **fields))
        assert refused.value.param == param
    assert len(bfl_emu.calls("fill")) == 1  # the refused ones sent nothing


async def test_the_emulator_refuses_what_bfl_refuses(bfl_emu) -> None:
    auth = {"x-key": KEY}
    image = base64.b64encode(png(photo(64, 64))).decode()
    white = base64.b64encode(png(np.full((64, 64), 255, np.uint8))).decode()
    small = base64.b64encode(png(np.full((32, 32), 255, np.uint8))).decode()
    fill, kontext = f"{bfl_emu.base_url}/v1/flux-pro-1.0-fill", f"{bfl_emu.base_url}/v1/flux-kontext-pro"
    async with httpx.AsyncClient() as http:
        assert (await http.post(fill, headers=auth, json={"image": image, "mask": white})).status_code == 200
        for bad in ({"image": image, "mask": small}, {"image": image}, {"image": "not base64!", "mask": white},
                    {"image": image, "mask": white, "steps": 5}, {"image": image, "mask": white, "width": 64}):
            assert (await http.post(fill, headers=auth, json=bad)).status_code == 422, bad
        good = {"prompt": "snow", "input_image": image, "aspect_ratio": "16:9"}
        assert (await http.post(kontext, headers=auth, json=good)).status_code == 200
        for bad in ({**good, "prompt": ""}, {**good, "aspect_ratio": "4:1"}, {**good, "input_image": "eA=="},
                    {**good, "mask": white}):
            assert (await http.post(kontext, headers=auth, json=bad)).status_code == 422, bad
        assert (await http.post(kontext, json=good)).status_code == 403

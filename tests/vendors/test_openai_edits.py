"""dall-e-2 edits and variations forwarded to OpenAI's own endpoints (the emulator follows their reference):
the input as a PNG, the mask as OpenAI wants it (transparent where to edit), no prompt for variations, priced by
size; hosted models without edits answer 400 naming `model` and nothing goes upstream."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from openai import OpenAI
from PIL import Image

from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.emulators.common import EmulatorServer, Fail
from tests.support.emulators.openai_api import OpenAIEmulator
from tests.support.server_harness import RunningServer, running_server

VENDOR_KEY = "sk-vendor-edits-0123456789"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def emulator() -> Iterator[OpenAIEmulator]:
    with EmulatorServer(OpenAIEmulator(VENDOR_KEY)) as running:
        yield running


@pytest.fixture(scope="module")
def server(emulator: OpenAIEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    providers = {"openai": {"api_key": VENDOR_KEY, "base_url": emulator.base_url + "/v1", "max_retries": 0},
                 "bfl": {"api_key": "sk-bfl-unused"}}
    with running_server(data_dir=tmp_path_factory.mktemp("vendor-edits"), api_keys=TEST_KEYS,
                        providers=providers) as running:
        yield running


@pytest.fixture
def client(server: RunningServer, emulator: OpenAIEmulator) -> OpenAI:
    emulator.reset()
    return OpenAI(base_url=server.api_url, api_key=TEST_KEY, max_retries=0)


def test_an_edit_with_a_mask_goes_to_openai_with_the_mask_as_openai_wants_it(client: OpenAI,
                                                                             emulator: OpenAIEmulator) -> None:
    alpha = np.full((300, 300), 255, np.uint8)
    alpha[:150, :150] = 0  # edit the top-left quarter
    mask = png(np.dstack([np.zeros((300, 300, 3), np.uint8), alpha]))
    response = client.images.edit(model="dall-e-2", image=("a.png", png(np.full((300, 300, 3), 90, np.uint8)),
                                                            "image/png"),
                                  mask=("m.png", mask, "image/png"), prompt="a hat", size="256x256",
                                  response_format="b64_json")
    assert response.model_extra["perf"]["cost_usd"] == pytest.approx(0.016)  # priced by size, as generations
    (call,) = emulator.calls("edit")
    assert call.body["prompt"] == "a hat" and call.body["size"] == "256x256" and call.body["model"] == "dall-e-2"
    sent_image = Image.open(io.BytesIO(call.body["files"]["image"]))
    sent_mask = np.asarray(Image.open(io.BytesIO(call.body["files"]["mask"])).getchannel("A"))
    assert sent_image.size == (256, 256) and sent_mask.shape == (256, 256)
    assert (sent_mask[:120, :120] == 0).all() and (sent_mask[136:, 136:] == 255).all()


def test_a_variation_sends_no_prompt_and_returns_every_image(client: OpenAI, emulator: OpenAIEmulator) -> None:
    response = client.images.create_variation(model="dall-e-2", image=("a.png", png(np.zeros((64, 64, 3),
                                                                                         np.uint8)), "image/png"),
                                              n=3, size="512x512")
    assert len(response.data) == 3 and all(item.url for item in response.data)
    (call,) = emulator.calls("variation")
    assert "prompt" not in call.body and call.body["n"] == "3"


def test_vendor_errors_map_as_for_generations(client: OpenAI, emulator: OpenAIEmulator) -> None:
    emulator.script("edit", Fail(500))
    with pytest.raises(openai.APIStatusError) as raised:
        client.images.edit(model="dall-e-2", image=("a.png", png(np.zeros((64, 64, 3), np.uint8)), "image/png"),
                           prompt="a hat")
    assert raised.value.status_code == 502


def test_hosted_models_without_edits_are_refused_before_anything_goes_upstream(client: OpenAI,
                                                                              emulator: OpenAIEmulator) -> None:
    for model in ("dall-e-3", "imagen-3"):
        with pytest.raises(openai.BadRequestError) as raised:
            client.images.edit(model=model, image=("a.png", png(np.zeros((64, 64, 3), np.uint8)), "image/png"),
                               prompt="a hat")
        assert raised.value.body["param"] == "model"
    assert emulator.requests == []


def test_an_id_mapped_to_a_gpt_image_model_edits_several_images(emulator: OpenAIEmulator, tmp_path: Path) -> None:
    emulator.reset()
    providers = {"openai": {"api_key": VENDOR_KEY, "base_url": emulator.base_url + "/v1",
                            "models": {"dall-e-2": "gpt-image-1"}}}
    inputs = [("a.png", png(np.full((200, 300, 3), 10, np.uint8)), "image/png"),
              ("b.png", png(np.full((64, 64, 3), 200, np.uint8)), "image/png")]
    with running_server(data_dir=tmp_path, api_keys=TEST_KEYS, providers=providers) as mapped:
        client = OpenAI(base_url=mapped.api_url, api_key=TEST_KEY, max_retries=0)
        response = client.images.edit(model="dall-e-2", image=inputs, prompt="put them together")
    assert response.model_extra["perf"]["upstream_model"] == "gpt-image-1" and len(response.data) == 1
    (call,) = emulator.calls("edit")
    sent = [Image.open(io.BytesIO(data)) for name, data in call.body["file_list"] if name == "image[]"]
    # The first at the request's size (dall-e-2's square nearest the input), the others as given.
    assert [image.size for image in sent] == [(256, 256), (64, 64)]
    assert call.body["size"] == "1024x1024"  # the GPT image size nearest the request's
    assert "response_format" not in call.body and call.body["quality"] == "medium"


def test_several_images_are_refused_where_one_is_taken(client: OpenAI, emulator: OpenAIEmulator) -> None:
    two = [("a.png", png(np.zeros((64, 64, 3), np.uint8)), "image/png")] * 2
    for model in ("dall-e-2", "tiny-flux", "flux-pro"):  # dall-e-2 itself, a local model, another vendor
        with pytest.raises(openai.BadRequestError) as raised:
            client.images.edit(model=model, image=two, prompt="a hat")
        assert raised.value.body["param"] == "image"
    assert emulator.requests == []

"""A GPT image model's own stream, passed on: `stream: true` with `partial_images` on an id mapped to a GPT image
model streams upstream and hands each partial image on as it comes; DALL-E models send the completed event only
(nothing streamed upstream)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.emulators.common import EmulatorServer
from tests.support.emulators.openai_api import OpenAIEmulator
from tests.support.server_harness import running_server

VENDOR_KEY = "sk-vendor-stream-0123456789"


@pytest.fixture(scope="module")
def emulator() -> Iterator[OpenAIEmulator]:
    with EmulatorServer(OpenAIEmulator(VENDOR_KEY)) as running:
        yield running


def test_a_gpt_image_stream_is_passed_on_and_dall_e_answers_once(emulator: OpenAIEmulator, tmp_path: Path) -> None:
    providers = {"openai": {"api_key": VENDOR_KEY, "base_url": emulator.base_url + "/v1",
                            "models": {"dall-e-3": "gpt-image-1"}}}
    with running_server(data_dir=tmp_path, api_keys=TEST_KEYS, providers=providers) as server:
        client = OpenAI(base_url=server.api_url, api_key=TEST_KEY, max_retries=0)
        streamed = list(client.images.generate(model="dall-e-3", prompt="a fox", size="1024x1024", stream=True,
                                               partial_images=3))
        upstream = emulator.calls("generate")[-1].body
        plain = list(client.images.generate(model="dall-e-2", prompt="a fox", size="256x256", stream=True,
                                            partial_images=2))
        dall_e = emulator.calls("generate")[-1].body
    assert [(e.type, getattr(e, "partial_image_index", None)) for e in streamed] == [
        ("image_generation.partial_image", 0), ("image_generation.partial_image", 1),
        ("image_generation.partial_image", 2), ("image_generation.completed", None)]
    assert upstream["stream"] is True and upstream["partial_images"] == 3 and upstream["model"] == "gpt-image-1"
    assert streamed[-1].model_extra["perf"]["upstream_model"] == "gpt-image-1"
    assert [e.type for e in plain] == ["image_generation.completed"] and "stream" not in dall_e

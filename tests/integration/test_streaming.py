"""`stream: true` through a real server and the official `openai` client: previews then completed images, in
OpenAI's event format; the final image equals the non-streamed one; errors before the stream are ordinary
answers; hosted models send the completed event only; a client that leaves is not billed."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from PIL import Image

from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.emulators.common import EmulatorServer
from tests.support.emulators.openai_api import OpenAIEmulator
from tests.support.server_harness import RunningServer, running_server

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
VENDOR_KEY = "sk-vendor-stream-test"
SIM = {"kind": "simulated", "time_scale": 0.001, "sizes": ["256x256"], "price_usd": 0.01,
       "extra_params": ["seed"]}
SLOW = {**SIM, "time_scale": 0.5}  # 28 steps at 256x256: about 1.2 s on the device


@pytest.fixture(scope="module")
def vendor() -> Iterator[OpenAIEmulator]:
    with EmulatorServer(OpenAIEmulator(VENDOR_KEY)) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path,
                  vendor: OpenAIEmulator) -> Iterator[RunningServer]:
    providers = {"openai": {"api_key": VENDOR_KEY, "base_url": vendor.base_url + "/v1"}}
    with running_server(data_dir=tmp_path_factory.mktemp("stream"), model_cache=model_cache, api_keys=TEST_KEYS,
                        models={"sim": SIM, "slow": SLOW}, providers=providers, default_model="sim") as server:
        yield server


@pytest.fixture
def client(stream_server: RunningServer) -> OpenAI:
    return OpenAI(base_url=stream_server.api_url, api_key=TEST_KEY, max_retries=0)


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_tiny_flux_streams_its_previews_then_the_image_it_would_have_made(client: OpenAI) -> None:
    arguments = {"model": "tiny-flux", "prompt": "a red cube", "size": "256x256",
                 "extra_body": {"seed": 4, "num_inference_steps": 4}}
    events = list(client.images.generate(stream=True, partial_images=2, **arguments))
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert all(e.size == "256x256" and e.output_format == "png" for e in events)
    assert all(pixels(e.b64_json).shape == (256, 256, 3) for e in events)
    assert not np.array_equal(pixels(events[0].b64_json), pixels(events[-1].b64_json))  # a preview, not the end
    plain = client.images.generate(response_format="b64_json", **arguments)
    assert events[-1].b64_json == plain.data[0].b64_json  # previews never change the image
    perf = events[-1].model_extra["perf"]
    assert perf["model_used"] == "tiny-flux" and perf["device_ms"] > 0


def test_each_image_of_a_request_gets_its_previews_and_its_completed_event(client: OpenAI) -> None:
    events = list(client.images.generate(model="sim", prompt="a fox", size="256x256", n=2, stream=True,
                                         partial_images=3))
    partial = [(e.model_extra["image_index"], e.partial_image_index) for e in events
               if e.type == "image_generation.partial_image"]
    assert sorted(partial) == [(i, p) for i in (0, 1) for p in range(3)]
    for image in (0, 1):  # in order per image
        assert [p for i, p in partial if i == image] == [0, 1, 2]
    completed = [e for e in events if e.type == "image_generation.completed"]
    assert [e.model_extra["image_index"] for e in completed] == [0, 1]
    assert events[-2:] == completed


def test_no_previews_and_hosted_models_send_the_completed_event_only(client: OpenAI) -> None:
    quiet = list(client.images.generate(model="sim", prompt="a fox", size="256x256", stream=True))
    assert [e.type for e in quiet] == ["image_generation.completed"]
    hosted = list(client.images.generate(model="dall-e-3", prompt="a fox", size="1024x1024", stream=True,
                                         partial_images=2))
    assert [e.type for e in hosted] == ["image_generation.completed"]
    assert hosted[0].model_extra["perf"]["provider"] == "openai"


@pytest.mark.parametrize(("body", "param"), [
    ({"stream": True, "partial_images": 4}, "partial_images"),
    ({"partial_images": 2}, "partial_images"),
    ({"stream": True, "response_format": "url"}, "response_format"),
    ({"stream": "yes"}, "stream"),
])
def test_bad_streaming_requests_are_refused_before_any_event(stream_server: RunningServer, body: dict,
                                                             param: str) -> None:
    response = httpx.post(stream_server.api_url + "/images/generations", headers=AUTH,
                          json={"model": "sim", "prompt": "a fox", "size": "256x256", **body})
    assert response.status_code == 400 and response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["param"] == param


def test_quotas_refuse_a_stream_with_an_ordinary_429(tmp_path: Path, model_cache: Path) -> None:
    with running_server(data_dir=tmp_path, model_cache=model_cache, api_keys=f"{TEST_KEY}:free",
                        models={"sim": SIM}) as server:
        client = OpenAI(base_url=server.api_url, api_key=TEST_KEY, max_retries=0)
        for _ in range(5):  # the free tier: 5 images a minute
            list(client.images.generate(model="sim", prompt="a fox", size="256x256", stream=True))
        with pytest.raises(openai.RateLimitError):
            list(client.images.generate(model="sim", prompt="a fox", size="256x256", stream=True))


def test_a_streamed_edit_sends_image_edit_events(client: OpenAI) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((256, 256, 3), 90, np.uint8)).save(buffer, "PNG")
    events = list(client.images.edit(model="sim", image=("in.png", buffer.getvalue(), "image/png"),
                                     prompt="a fox", stream=True, partial_images=1))
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]


def test_a_client_that_leaves_mid_stream_is_not_billed(stream_server: RunningServer) -> None:
    def usage() -> int:
        return httpx.get(stream_server.api_url + "/usage", headers=AUTH).json()["total"]["images"]

    before = usage()
    with httpx.stream("POST", stream_server.api_url + "/images/generations", headers=AUTH, timeout=30,
                      json={"model": "slow", "prompt": "a fox", "size": "256x256", "stream": True,
                            "partial_images": 1}) as response:
        assert response.status_code == 200
        first = next(line for line in response.iter_lines() if line.startswith("data: "))
        assert json.loads(first[6:])["type"] == "image_generation.partial_image"
    # The connection is closed before the image is done: the work is cancelled and nothing is billed.
    time.sleep(2.0)  # longer than the image would have taken
    assert usage() == before
    assert httpx.get(stream_server.base_url + "/health").status_code == 200

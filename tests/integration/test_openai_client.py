"""The official `openai` Python client against a real server: the drop-in promise."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from tests.support.constants import TEST_KEY

EXTRAS = {"num_inference_steps": 1, "seed": 42}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_url, api_key=TEST_KEY, max_retries=0, timeout=120)


def test_generate_url_then_fetch_the_image(client: openai.OpenAI) -> None:
    result = client.images.generate(model="tiny-flux", prompt="a lighthouse", size="512x256", extra_body=EXTRAS)
    assert result.created > 0 and len(result.data) == 1
    image = Image.open(io.BytesIO(httpx.get(result.data[0].url).content))
    assert image.size == (512, 256)
    extra = result.model_extra or {}
    perf = extra["perf"]
    assert perf["model_used"] == "tiny-flux" and perf["size"] == "512x256" and perf["quality"] == "standard"
    assert perf["request_id"].startswith("req_img_") and perf["latency_ms"] > 0
    assert perf["batch_size"] == 1 and perf["device_ms"] > 0 and perf["cost_usd"] == 0.0
    assert result.data[0].model_extra["seed"] == 42


def test_generate_b64_with_n_and_extra_body(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="tiny-sd3", prompt="a lighthouse", n=2, size="256x256", response_format="b64_json",
        extra_body={**EXTRAS, "negative_prompt": "fog", "guidance_scale": 5.0},
    )
    seeds = [item.model_extra["seed"] for item in result.data]
    assert seeds == [42, 43]
    for item in result.data:
        assert item.url is None
        assert Image.open(io.BytesIO(base64.b64decode(item.b64_json))).size == (256, 256)


def test_with_raw_response_exposes_the_request_id_header(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(model="tiny-flux", prompt="x", size="256x256", extra_body=EXTRAS)
    request_id = raw.headers["x-request-id"]
    assert raw.parse().model_extra["perf"]["request_id"] == request_id


def test_bad_input_raises_bad_request_with_param_and_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.images.generate(model="tiny-flux", prompt="x", size="100x100")
    assert error.value.status_code == 400
    assert error.value.param == "size"
    assert "100x100" in error.value.message
    assert error.value.type == "invalid_request"

    with pytest.raises(openai.BadRequestError) as error:
        client.images.generate(model="tiny-flux", prompt="x", extra_body={"cfg": 3})
    assert error.value.param == "cfg"

    with pytest.raises(openai.BadRequestError) as error:
        client.images.generate(model="no-such-model", prompt="x")
    assert error.value.param == "model" and error.value.code == "model_not_found"


def test_wrong_key_raises_authentication_error(server) -> None:
    bad = openai.OpenAI(base_url=server.api_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as error:
        bad.images.generate(model="tiny-flux", prompt="x")
    assert error.value.status_code == 401 and error.value.type == "authentication_error"
    assert "sk-wrong" not in str(error.value)


def test_vendor_model_without_key_is_a_clear_503(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as error:
        client.images.generate(model="dall-e-3", prompt="x")
    assert error.value.status_code == 503 and error.value.type == "model_unavailable"


def test_models_list_in_openai_format_with_extensions(client: openai.OpenAI) -> None:
    models = {model.id: model for model in client.models.list()}
    expected = {"dall-e-3", "dall-e-2", "stable-diffusion-3", "flux-pro", "flux-dev", "ideogram-2", "imagen-3",
                "tiny-sd3", "tiny-flux"}
    assert expected <= set(models)
    tiny = models["tiny-flux"].model_extra
    assert tiny["ready"] is True and tiny["local"] is True and "noise" in tiny["description"]
    assert tiny["device"] == "cpu" and tiny["dtype"] == "fp32"
    dalle3 = models["dall-e-3"].model_extra
    assert dalle3["max_images"] == 1 and dalle3["price_usd_per_image"] == 0.04
    assert dalle3["price_usd_per_image_hd"] == 0.08 and dalle3["provider"] == "openai"
    assert models["flux-dev"].model_extra["sizes"] == ["1024x1024", "custom"]
    assert models["flux-dev"].model_extra["ready"] is False
    assert "imageserve pull flux-dev" in models["flux-dev"].model_extra["status"]


def test_retrieving_an_unknown_model_is_404(client: openai.OpenAI) -> None:
    assert client.models.retrieve("tiny-flux").id == "tiny-flux"
    with pytest.raises(openai.NotFoundError) as error:
        client.models.retrieve("no-such-model")
    assert error.value.status_code == 404 and error.value.code == "model_not_found"

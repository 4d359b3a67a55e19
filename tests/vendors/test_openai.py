"""OpenAI adapter against the OpenAI emulator, through the official SDK."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from server.api.errors import headers_of, status_of
from server.errors import ContentPolicyViolation, RateLimitExceeded, UpstreamError
from tests.support.emulators.common import Fail, Hang, Malformed
from tests.vendors.conftest import KEYS, assert_no_secret, make_settings, request

KEY = KEYS["openai"]


def settings(emu, **overrides):
    return make_settings("openai", f"{emu.base_url}/v1", **overrides)


async def test_dall_e_3_b64_with_revised_prompt_and_hd(openai_emu, backends):
    backend = await backends("dall-e-3", settings(openai_emu))
    result = await backend.generate(request("dall-e-3", size="1792x1024", quality="hd", style="natural"))
    sent = openai_emu.calls("generate")[0]
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body == {
        "model": "dall-e-3",
        "prompt": "a red fox",
        "n": 1,
        "size": "1792x1024",
        "quality": "hd",
        "style": "natural",
        "response_format": "b64_json",
    }
    assert (result.width, result.height, result.quality) == (1792, 1024, "hd")
    [image] = result.images
    assert image.mime_type == "image/png" and Image.open(io.BytesIO(image.data)).size == (1792, 1024)
    assert image.revised_prompt == "A detailed rendering of a red fox"


async def test_dall_e_2_url_answers_are_downloaded_without_the_key(openai_emu, backends):
    backend = await backends("dall-e-2", settings(openai_emu, response_format="url"))
    result = await backend.generate(request("dall-e-2", n=3, size="512x512"))
    assert openai_emu.calls("generate")[0].body["response_format"] == "url"
    downloads = openai_emu.calls("file")
    assert len(downloads) == 3 and all("authorization" not in d.headers for d in downloads)
    assert len(result.images) == 3 and (result.width, result.height) == (512, 512)
    assert all(Image.open(io.BytesIO(i.data)).format == "PNG" for i in result.images)
    assert all(i.revised_prompt is None for i in result.images)


async def test_mapped_to_gpt_image_translates_parameters(openai_emu, backends):
    backend = await backends("dall-e-3", settings(openai_emu, models={"dall-e-3": "gpt-image-2"}))
    assert "gpt-image-2" in backend.readiness().detail
    result = await backend.generate(request("dall-e-3", size="1024x1792", quality="hd", style="vivid"))
    body = openai_emu.calls("generate")[0].body
    assert body == {
        "model": "gpt-image-2",
        "prompt": "a red fox",
        "n": 1,
        "size": "1024x1536",
        "quality": "high",
        "output_format": "png",
    }
    assert (result.width, result.height, result.quality) == (1024, 1536, "hd")
    assert result.extra["upstream_quality"] == "high"


async def test_content_policy(openai_emu, backends):
    for mapping in ({}, {"dall-e-3": "gpt-image-2"}):
        backend = await backends("dall-e-3", settings(openai_emu, models=mapping))
        with pytest.raises(ContentPolicyViolation) as caught:
            await backend.generate(request("dall-e-3", prompt="something forbidden"))
        assert status_of(caught.value) == 400 and caught.value.type == "content_policy_violation"


@pytest.mark.parametrize(("retry_after", "expected"), [("3", 3), (None, 7)])
async def test_rate_limit(openai_emu, backends, retry_after, expected):
    openai_emu.script("generate", Fail(429, retry_after=retry_after))
    backend = await backends("dall-e-3", settings(openai_emu))
    with pytest.raises(RateLimitExceeded) as caught:
        await backend.generate(request("dall-e-3"))
    assert caught.value.retry_after == expected and headers_of(caught.value)["Retry-After"] == str(expected)
    assert len(openai_emu.calls("generate")) == 1  # a 429 is the caller's to retry, not ours
    assert_no_secret(caught.value, KEY)


async def test_5xx_then_success(openai_emu, backends):
    openai_emu.script("generate", Fail(500), Fail(503))
    backend = await backends("dall-e-3", settings(openai_emu))
    result = await backend.generate(request("dall-e-3"))
    assert len(result.images) == 1 and len(openai_emu.calls("generate")) == 3


async def test_persistent_5xx(openai_emu, backends, caplog):
    openai_emu.script("generate", Fail(502), Fail(502), Fail(502), Fail(502))
    backend = await backends("dall-e-3", settings(openai_emu))
    with pytest.raises(UpstreamError) as caught:
        await backend.generate(request("dall-e-3"))
    assert status_of(caught.value) == 502 and "after 3 attempts" in caught.value.message
    assert len(openai_emu.calls("generate")) == 3
    assert_no_secret(caught.value, KEY)
    assert KEY not in caplog.text


async def test_hung_upstream_times_out(openai_emu, backends):
    openai_emu.script("generate", Hang(), Hang())
    backend = await backends("dall-e-3", settings(openai_emu, timeout_seconds=0.2, max_retries=1))
    with pytest.raises(UpstreamError) as caught:
        await backend.generate(request("dall-e-3"))
    assert "timed out" in caught.value.message


async def test_wrong_key(openai_emu, backends, caplog):
    backend = await backends("dall-e-3", settings(openai_emu, api_key="sk-wrong-key-123456"))
    with pytest.raises(UpstreamError) as caught:
        await backend.generate(request("dall-e-3"))
    assert status_of(caught.value) == 502
    assert "OpenAI" in caught.value.message and "IMAGESERVE_OPENAI_API_KEY" in caught.value.message
    assert_no_secret(caught.value, "sk-wrong-key-123456", KEY)
    assert "sk-wrong-key-123456" not in caplog.text
    assert len(openai_emu.calls("generate")) == 1


async def test_malformed_body(openai_emu, backends):
    openai_emu.script("generate", Malformed())
    backend = await backends("dall-e-3", settings(openai_emu))
    with pytest.raises(UpstreamError) as caught:
        await backend.generate(request("dall-e-3"))
    assert "malformed" in caught.value.message


async def test_retired_model_names_the_setting(openai_emu, backends):
    backend = await backends("dall-e-3", settings(openai_emu, models={"dall-e-3": "dall-e-1"}))
    with pytest.raises(UpstreamError) as caught:
        await backend.generate(request("dall-e-3"))
    assert "IMAGESERVE_OPENAI_MODELS" in caught.value.message


async def test_cancellation_propagates(openai_emu, backends):
    openai_emu.script("generate", Hang(2))
    backend = await backends("dall-e-3", settings(openai_emu, timeout_seconds=5))
    task = asyncio.create_task(backend.generate(request("dall-e-3")))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

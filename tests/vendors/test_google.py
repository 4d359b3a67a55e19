"""Google adapter against the Gemini API emulator: Imagen `:predict` and Gemini image `:generateContent`."""

from __future__ import annotations

import pytest

from server.errors import ContentPolicyViolation, RateLimitExceeded, UpstreamError
from tests.support.emulators.common import Fail, Hang, Malformed
from tests.vendors.conftest import KEYS, assert_no_secret, make_settings, request

KEY = KEYS["google"]


async def test_predict_success(google_emu, backends):
    backend = await backends("imagen-3", make_settings("google", google_emu.base_url))
    result = await backend.generate(request("imagen-3", n=4, negative_prompt="text"))
    sent = google_emu.calls("predict")[0]
    assert sent.path == "/v1beta/models/imagen-3.0-generate-002:predict"
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.body == {
        "instances": [{"prompt": "a red fox"}],
        "parameters": {
            "sampleCount": 4,
            "aspectRatio": "1:1",
            "includeRaiReason": True,
            "negativePrompt": "text",
        },
    }
    assert len(result.images) == 4 and (result.width, result.height) == (1024, 1024)


async def test_predict_size_mapping(google_emu, backends):
    backend = await backends("imagen-3", make_settings("google", google_emu.base_url))
    result = await backend.generate(request("imagen-3", size="1920x1080"))
    assert google_emu.calls("predict")[0].body["parameters"]["aspectRatio"] == "16:9"
    assert (result.width, result.height) == (1408, 768)


async def test_safety_filtering(google_emu, backends):
    backend = await backends("imagen-3", make_settings("google", google_emu.base_url))
    some = await backend.generate(request("imagen-3", n=3, prompt="filter-some"))
    assert len(some.images) == 1
    with pytest.raises(ContentPolicyViolation):
        await backend.generate(request("imagen-3", n=2, prompt="filter-all"))
    with pytest.raises(ContentPolicyViolation):
        await backend.generate(request("imagen-3", prompt="something forbidden"))


@pytest.mark.parametrize(("retry_after", "expected"), [("9", 9), (None, 7)])
async def test_rate_limit(google_emu, backends, retry_after, expected):
    google_emu.script("predict", Fail(429, retry_after=retry_after))
    backend = await backends("imagen-3", make_settings("google", google_emu.base_url))
    with pytest.raises(RateLimitExceeded) as caught:
        await backend.generate(request("imagen-3"))
    assert caught.value.retry_after == expected


async def test_5xx_then_success_and_persistent(google_emu, backends):
    backend = await backends("imagen-3", make_settings("google", google_emu.base_url))
    google_emu.script("predict", Fail(503))
    assert len((await backend.generate(request("imagen-3"))).images) == 1
    google_emu.script("predict", *[Fail(500)] * 3)
    with pytest.raises(UpstreamError) as caught:
        await backend.generate(request("imagen-3"))
    assert_no_secret(caught.value, KEY)


async def test_hung_upstream(google_emu, backends):
    google_emu.script("predict", Hang(), Hang(), Hang())
    backend = await backends("imagen-3", make_settings("google", google_emu.base_url, timeout_seconds=0.2))
    with pytest.raises(UpstreamError, match="timed out"):
        await backend.generate(request("imagen-3"))


async def test_wrong_key_answered_as_400_api_key_invalid(google_emu, backends, caplog):
    backend = await backends("imagen-3", make_settings("google", google_emu.base_url, api_key="AIza-wrong"))
    with pytest.raises(UpstreamError) as caught:
        await backend.generate(request("imagen-3"))
    assert "IMAGESERVE_GOOGLE_API_KEY" in caught.value.message
    assert_no_secret(caught.value, "AIza-wrong", KEY)
    assert "AIza-wrong" not in caplog.text


async def test_malformed_body(google_emu, backends):
    google_emu.script("predict", Malformed('{"predictions": [{"bytesBase64Encoded": "%%%"}]}'))
    backend = await backends("imagen-3", make_settings("google", google_emu.base_url))
    with pytest.raises(UpstreamError, match="malformed"):
        await backend.generate(request("imagen-3"))


async def test_retired_model_says_how_to_fix_it(google_emu, backends):
    backend = await backends(
        "imagen-3", make_settings("google", google_emu.base_url, model="imagen-3.0-generate-001")
    )
    with pytest.raises(UpstreamError) as caught:
        await backend.generate(request("imagen-3"))
    assert "IMAGESERVE_GOOGLE_MODEL" in caught.value.message


async def test_gemini_image_model(google_emu, backends):
    settings = make_settings("google", google_emu.base_url, model="gemini-3.1-flash-image")
    backend = await backends("imagen-3", settings)
    result = await backend.generate(request("imagen-3", n=2, size="1920x1080", negative_prompt="text"))
    calls = google_emu.calls("generateContent")
    assert len(calls) == 2 and calls[0].path == "/v1beta/models/gemini-3.1-flash-image:generateContent"
    assert calls[0].body["generationConfig"] == {
        "responseModalities": ["IMAGE"],
        "imageConfig": {"aspectRatio": "16:9"},
    }
    assert calls[0].body["contents"][0]["parts"][0]["text"] == "a red fox\n\nAvoid: text"
    assert len(result.images) == 2 and (result.width, result.height) == (1344, 768)
    with pytest.raises(ContentPolicyViolation):
        await backend.generate(request("imagen-3", prompt="filter-all"))
    with pytest.raises(ContentPolicyViolation):
        await backend.generate(request("imagen-3", prompt="forbidden"))

"""Ideogram adapter against the Ideogram emulator."""

from __future__ import annotations

import pytest

from server.errors import ContentPolicyViolation, RateLimitExceeded, UpstreamError
from tests.support.emulators.common import Fail, Hang, Malformed
from tests.vendors.conftest import KEYS, assert_no_secret, make_settings, request

KEY = KEYS["ideogram"]


async def test_success_with_resolution_seed_and_magic_prompt(ideogram_emu, backends):
    backend = await backends("ideogram-2", make_settings("ideogram", ideogram_emu.base_url))
    result = await backend.generate(
        request("ideogram-2", n=2, size="1024x1024", seed=7, negative_prompt="blur")
    )
    sent = ideogram_emu.calls("generate")[0]
    assert sent.headers["api-key"] == KEY
    assert sent.body == {
        "image_request": {
            "prompt": "a red fox",
            "model": "V_2",
            "resolution": "RESOLUTION_1024_1024",
            "num_images": 2,
            "magic_prompt_option": "AUTO",
            "negative_prompt": "blur",
            "seed": 7,
        }
    }
    assert len(result.images) == 2 and (result.width, result.height) == (1024, 1024)
    assert all(i.revised_prompt == "Magic: a striking, detailed image of a red fox" for i in result.images)
    assert all(i.seed == 7 for i in result.images)
    assert all("api-key" not in f.headers for f in ideogram_emu.calls("file"))


@pytest.mark.parametrize(
    ("size", "resolution", "produced"),
    [
        ("1920x1088", "RESOLUTION_1280_720", (1280, 720)),
        ("768x1344", "RESOLUTION_768_1344", (768, 1344)),
        ("2048x2048", "RESOLUTION_1024_1024", (1024, 1024)),
    ],
)
async def test_size_mapping(ideogram_emu, backends, size, resolution, produced):
    backend = await backends("ideogram-2", make_settings("ideogram", ideogram_emu.base_url))
    result = await backend.generate(request("ideogram-2", size=size))
    assert ideogram_emu.calls("generate")[0].body["image_request"]["resolution"] == resolution
    assert (result.width, result.height) == produced


async def test_safety_422_is_content_policy(ideogram_emu, backends):
    backend = await backends("ideogram-2", make_settings("ideogram", ideogram_emu.base_url))
    with pytest.raises(ContentPolicyViolation):
        await backend.generate(request("ideogram-2", prompt="something forbidden"))


async def test_unsafe_images(ideogram_emu, backends):
    backend = await backends("ideogram-2", make_settings("ideogram", ideogram_emu.base_url))
    partial = await backend.generate(request("ideogram-2", n=3, prompt="unsafe-image here"))
    assert len(partial.images) == 2 and partial.extra["filtered"] == 1
    with pytest.raises(ContentPolicyViolation):
        await backend.generate(request("ideogram-2", n=2, prompt="all-unsafe here"))


@pytest.mark.parametrize(("retry_after", "expected"), [("5", 5), (None, 7)])
async def test_rate_limit(ideogram_emu, backends, retry_after, expected):
    ideogram_emu.script("generate", Fail(429, retry_after=retry_after))
    backend = await backends("ideogram-2", make_settings("ideogram", ideogram_emu.base_url))
    with pytest.raises(RateLimitExceeded) as caught:
        await backend.generate(request("ideogram-2"))
    assert caught.value.retry_after == expected


async def test_5xx_then_success_and_persistent_5xx(ideogram_emu, backends):
    backend = await backends("ideogram-2", make_settings("ideogram", ideogram_emu.base_url))
    ideogram_emu.script("generate", Fail(500), Fail(500))
    assert len((await backend.generate(request("ideogram-2"))).images) == 1
    ideogram_emu.script("generate", *[Fail(503)] * 3)
    with pytest.raises(UpstreamError) as caught:
        await backend.generate(request("ideogram-2"))
    assert_no_secret(caught.value, KEY)


async def test_hung_upstream(ideogram_emu, backends):
    ideogram_emu.script("generate", Hang(), Hang(), Hang())
    settings = make_settings("ideogram", ideogram_emu.base_url, timeout_seconds=0.2)
    backend = await backends("ideogram-2", settings)
    with pytest.raises(UpstreamError, match="timed out"):
        await backend.generate(request("ideogram-2"))
    assert len(ideogram_emu.calls("generate")) == 3


async def test_wrong_key(ideogram_emu, backends, caplog):
    backend = await backends(
        "ideogram-2", make_settings("ideogram", ideogram_emu.base_url, api_key="ideo-bad-1")
    )
    with pytest.raises(UpstreamError) as caught:
        await backend.generate(request("ideogram-2"))
    assert "IMAGESERVE_IDEOGRAM_API_KEY" in caught.value.message
    assert_no_secret(caught.value, "ideo-bad-1", KEY)
    assert "ideo-bad-1" not in caplog.text


async def test_malformed_body(ideogram_emu, backends):
    ideogram_emu.script("generate", Malformed('{"data": "nope"}'))
    backend = await backends("ideogram-2", make_settings("ideogram", ideogram_emu.base_url))
    with pytest.raises(UpstreamError, match="malformed"):
        await backend.generate(request("ideogram-2"))


async def test_broken_image_link_is_malformed(ideogram_emu, backends):
    ideogram_emu.script("file", Malformed("not an image"))
    backend = await backends("ideogram-2", make_settings("ideogram", ideogram_emu.base_url))
    with pytest.raises(UpstreamError, match="malformed"):
        await backend.generate(request("ideogram-2"))

"""Shared vendor pieces: settings, missing keys, size mapping, Retry-After, the shared client pool."""

from __future__ import annotations

import email.utils
import time

import pytest

from pipelines.errors import ModelUnavailable
from server.api.errors import body_of, headers_of, status_of
from server.backends.factory import build_backend
from server.backends.vendors import VENDOR_BACKENDS
from server.backends.vendors.adapter import POOL
from server.backends.vendors.connection import Vendor, inspect_image, parse_retry_after
from server.backends.vendors.sizes import (
    DALL_E_3_SIZES,
    GPT_IMAGE_SIZES,
    IDEOGRAM_RESOLUTIONS,
    IMAGEN_RATIOS,
    fit_to_grid,
    nearest_aspect_ratio,
    nearest_size,
)
from server.errors import RateLimitExceeded, UpstreamError
from server.registry import ModelRegistry
from server.settings import Settings, load_settings
from tests.support.emulators.common import png

MODELS = {
    "dall-e-3": "OPENAI",
    "dall-e-2": "OPENAI",
    "flux-pro": "BFL",
    "ideogram-2": "IDEOGRAM",
    "imagen-3": "GOOGLE",
}


@pytest.mark.parametrize(("model_id", "provider"), MODELS.items())
async def test_missing_key_is_503_naming_the_setting(model_id, provider):
    spec = ModelRegistry.from_overrides({}).get(model_id)
    backend = build_backend(spec, Settings())
    readiness = backend.readiness()
    assert not readiness.ready and f"IMAGESERVE_{provider}_API_KEY" in readiness.detail
    with pytest.raises(ModelUnavailable) as caught:
        await backend.generate(None)  # type: ignore[arg-type]
    assert status_of(caught.value) == 503 and f"set IMAGESERVE_{provider}_API_KEY" in caught.value.message


async def test_configured_key_builds_the_adapter():
    settings = Settings(providers={p: {"api_key": "k"} for p in ("openai", "bfl", "ideogram", "google")})
    for model_id in MODELS:
        spec = ModelRegistry.from_overrides({}).get(model_id)
        backend = build_backend(spec, settings)
        assert isinstance(backend, VENDOR_BACKENDS[spec.kind]) and backend.readiness().ready


def test_settings_from_env_and_toml(tmp_path, monkeypatch):
    config = tmp_path / "imageserve.toml"
    config.write_text(
        '[providers.bfl]\napi_key = "from-toml"\nendpoint = "flux-pro"\ntimeout_seconds = 12\n'
        '[providers.openai]\nmodels = { "dall-e-3" = "gpt-image-2" }\n'
    )
    settings = load_settings(config)
    assert settings.providers.bfl.api_key.get_secret_value() == "from-toml"
    assert (settings.providers.bfl.endpoint, settings.providers.bfl.timeout_seconds) == ("flux-pro", 12)
    assert settings.providers.openai.models == {"dall-e-3": "gpt-image-2"}
    assert settings.providers.openai.base_url == "https://api.openai.com/v1"
    monkeypatch.setenv("IMAGESERVE_BFL_API_KEY", "from-env")
    monkeypatch.setenv("IMAGESERVE_BFL_BASE_URL", "https://api.eu.bfl.ai/")
    monkeypatch.setenv("IMAGESERVE_GOOGLE_MODEL", "gemini-3.1-flash-image")
    monkeypatch.setenv("IMAGESERVE_OPENAI_MODELS", '{"dall-e-2": "gpt-image-1.5"}')
    settings = load_settings(config)
    assert settings.providers.bfl.api_key.get_secret_value() == "from-env"  # env wins over the file
    assert settings.providers.bfl.base_url == "https://api.eu.bfl.ai"
    assert settings.providers.google.model == "gemini-3.1-flash-image"
    assert settings.providers.openai.models["dall-e-2"] == "gpt-image-1.5"
    assert "from-env" not in repr(settings) and "from-env" not in str(settings.model_dump())


def test_size_mapping_tables():
    assert nearest_size(1792, 1024, DALL_E_3_SIZES) == (1792, 1024)
    assert nearest_size(1792, 1024, GPT_IMAGE_SIZES) == (1536, 1024)
    assert nearest_size(1024, 1024, IDEOGRAM_RESOLUTIONS) == (1024, 1024)
    assert nearest_aspect_ratio(1024, 1792, list(IMAGEN_RATIOS)) == "9:16"
    assert nearest_aspect_ratio(1024, 1024, list(IMAGEN_RATIOS)) == "1:1"
    assert fit_to_grid(1024, 1024, lo=256, hi=1440, multiple=32) == (1024, 1024)
    assert fit_to_grid(2048, 256, lo=256, hi=1440, multiple=32) == (1440, 256)
    assert fit_to_grid(400, 400, lo=256, hi=1440, multiple=32) == (384, 384)


def test_retry_after_parsing():
    assert parse_retry_after({"Retry-After": "30"}) == 30
    assert parse_retry_after({"retry-after-ms": "1500", "Retry-After": "9"}) == 1.5
    soon = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 15 <= parse_retry_after({"Retry-After": soon}) <= 21
    assert parse_retry_after({"Retry-After": "soon-ish"}) is None
    assert parse_retry_after({}) is None
    # A vendor's header is not trusted without bounds: never infinite, NaN or more than an hour.
    assert parse_retry_after({"Retry-After": "inf"}) is None and parse_retry_after({"Retry-After": "nan"}) is None
    assert parse_retry_after({"retry-after-ms": "1e309", "Retry-After": "5"}) == 5
    assert parse_retry_after({"Retry-After": "1e308"}) == 3600
    assert parse_retry_after({"Retry-After": "-3"}) == 0


@pytest.mark.parametrize("retry_after", [float("inf"), float("nan"), 1e308])
def test_a_429_never_carries_an_unbounded_wait(retry_after: float) -> None:
    error = RateLimitExceeded("slow down", retry_after=retry_after)
    assert headers_of(error)["Retry-After"] == "86400" and body_of(error)["error"]["retry_after"] == 86400


async def test_pool_shares_and_closes_the_client():
    settings = Settings(providers={"bfl": {"api_key": "k"}})
    spec = ModelRegistry.from_overrides({}).get("flux-pro")
    first, second = build_backend(spec, settings), build_backend(spec, settings)
    before = len(POOL)
    await first.start()
    await second.start()
    vendor = first._vendor
    assert vendor is second._vendor and len(POOL) == before + 1
    await first.close()
    assert not vendor.http.is_closed
    await second.close()
    assert vendor.http.is_closed and len(POOL) == before


async def test_inspect_image_decodes_the_whole_image():
    """Base64 answers (OpenAI, Google) skip the download, so the check lives in `inspect_image` itself."""
    settings = Settings(providers={"google": {"api_key": "k"}})
    vendor = Vendor("google", settings.providers.google)
    try:
        whole = png(64, 48)
        info = inspect_image(whole, vendor)
        assert (info.mime_type, info.width, info.height) == ("image/png", 64, 48)
        for broken in (whole[: len(whole) // 2], whole[:40], b"not an image"):
            with pytest.raises(UpstreamError) as caught:
                inspect_image(broken, vendor)
            assert status_of(caught.value) == 502 and caught.value.code == "upstream_bad_response"
            assert "Google sent a malformed answer" in caught.value.message
    finally:
        await vendor.aclose()

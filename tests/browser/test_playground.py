"""The playground page (`/playground`) in a real headless Chromium: Debian's `chromium`, driven by Playwright.

Skips when Chromium or Playwright is missing, unless IMAGESERVE_TEST_REQUIRE_BROWSER=1 (CI), where it fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.api import playground
from server.app import create_app
from server.settings import Settings
from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.server_harness import RunningServer, running_server

pytestmark = pytest.mark.browser

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium", "/usr/lib/chromium/chromium")
GENERATION_TIMEOUT_MS = 60_000
STEP_TIMEOUT_MS = 10_000


def _chromium() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _missing(reason: str) -> None:
    if os.environ.get("IMAGESERVE_TEST_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (IMAGESERVE_TEST_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def _with_playground(settings: Settings) -> Any:
    app = create_app(settings)
    if not any(getattr(route, "path", None) == "/playground" for route in app.routes):
        app.include_router(playground.router)
    return app


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[RunningServer]:
    with running_server(_with_playground, data_dir=tmp_path_factory.mktemp("data"), model_cache=model_cache,
                        api_keys=TEST_KEYS, default_model="tiny-flux") as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    if executable is None:
        _missing("no Chromium: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("no Playwright for Python: pip install playwright==1.65.2")
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, headless=True,
                                          args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield launched
        finally:
            launched.close()


class Page:
    """A page in a fresh context, with every request URL it made."""

    def __init__(self, browser: Any, site: RunningServer, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.context.set_default_timeout(STEP_TIMEOUT_MS)
        self.page = self.context.new_page()
        self.urls: list[str] = []
        self.page.on("request", lambda request: self.urls.append(request.url))
        self.site = site

    def open_with_key(self) -> Any:
        page = self.page
        page.goto(self.site.base_url + "/", wait_until="domcontentloaded")
        assert page.url == self.site.base_url + "/playground"
        key = page.get_by_label("API key", exact=True)
        key.fill(TEST_KEY)
        key.press("Tab")  # `change`: the page lists the models with the key
        page.wait_for_selector('#model option[value="tiny-flux"]:not([disabled])', state="attached")
        return page

    def only_this_server(self) -> None:
        foreign = [url for url in self.urls
                   if not url.startswith(self.site.base_url + "/") and not url.startswith(("data:", "blob:"))]
        assert foreign == [], foreign
        assert any(url.startswith(self.site.base_url + "/v1/") for url in self.urls)


@pytest.fixture
def tab(browser: Any, site: RunningServer) -> Iterator[Page]:
    opened = Page(browser, site, viewport={"width": 1280, "height": 900})
    try:
        yield opened
    finally:
        opened.context.close()


def test_root_redirects_and_assets_have_their_media_types(site: RunningServer) -> None:
    root = httpx.get(site.base_url + "/", follow_redirects=False, timeout=10)
    assert root.status_code == 307 and root.headers["location"] == "/playground"
    page = httpx.get(site.base_url + "/playground", timeout=10)  # no key needed for the page itself
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    css = httpx.get(site.base_url + "/playground/playground.css", timeout=10)
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    js = httpx.get(site.base_url + "/playground/playground.js", timeout=10)
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert httpx.get(site.base_url + "/playground/app.py", timeout=10).status_code == 404
    assert httpx.get(site.base_url + "/playground/..%2Fapi%2Fplayground.py", timeout=10).status_code == 404


def test_lists_models_and_keeps_the_key_in_session_storage_only(tab: Page) -> None:
    page = tab.open_with_key()
    for name in ("Prompt", "Model", "Size", "API key"):
        assert page.get_by_label(name, exact=True).count() == 1, name
    assert page.get_by_role("button", name="Generate", exact=True).is_visible()
    assert page.get_by_role("region", name="Results", exact=True).is_visible()
    model = page.get_by_label("Model", exact=True)
    assert model.input_value() == "tiny-flux" or page.locator('#model option[value="tiny-flux"]').is_enabled()
    vendor = page.locator('#model option[value="dall-e-3"]')
    assert vendor.is_disabled()
    assert "no OpenAI API key is configured" in vendor.text_content()
    assert page.evaluate("sessionStorage.getItem('imageserve.apiKey')") == TEST_KEY
    assert page.evaluate("JSON.stringify(Object.assign({}, localStorage))") == "{}"
    assert page.evaluate("document.cookie") == ""
    # tiny-sd3 takes a negative prompt, tiny-flux does not
    model.select_option("tiny-flux")
    assert page.get_by_label("Negative prompt", exact=True).is_hidden()
    model.select_option("tiny-sd3")
    assert page.get_by_label("Negative prompt", exact=True).is_visible()
    tab.only_this_server()


def test_generates_a_streamed_image_with_its_seed_latency_and_cost(tab: Page, tmp_path: Path) -> None:
    page = tab.open_with_key()
    bodies: list[Any] = []
    page.on("request", lambda request: bodies.append(request.post_data_json)
            if request.url.endswith("/v1/images/generations") else None)
    page.get_by_label("Model", exact=True).select_option("tiny-flux")
    page.get_by_label("Prompt", exact=True).fill("a red barn")
    page.get_by_label("Size", exact=True).select_option("custom")
    page.get_by_label("Custom size (WxH)", exact=True).fill("256x256")
    page.get_by_label("Seed", exact=True).fill("7")
    page.get_by_label("Steps", exact=True).fill("2")
    page.get_by_role("button", name="Generate", exact=True).click()
    results = page.get_by_role("region", name="Results", exact=True)
    final = results.locator("img.final")
    final.wait_for(timeout=GENERATION_TIMEOUT_MS)
    page.wait_for_function("document.querySelector('#current img.final').naturalWidth > 0")
    size = final.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size == [256, 256]
    assert int(results.locator("figure").get_attribute("data-previews") or 0) >= 1  # previews came first
    assert results.locator('[data-field="seed"]').text_content() == "7"
    assert results.locator('[data-field="latency"]').text_content().endswith(" ms")
    assert results.locator('[data-field="cost"]').text_content() == "$0.0000"
    assert results.locator('[data-field="batch"]').text_content() == "1"
    link = results.get_by_role("link", name="Download")
    assert link.get_attribute("href").startswith("data:image/png;base64,")
    assert link.get_attribute("download") == "imageserve-tiny-flux-7.png"
    assert page.get_by_role("region", name="History").locator("img").count() == 1
    assert page.get_by_role("alert").text_content() == ""
    assert bodies == [{"model": "tiny-flux", "prompt": "a red barn", "n": 1, "size": "256x256",
                       "output_format": "png", "response_format": "b64_json", "seed": 7,
                       "num_inference_steps": 2, "stream": True, "partial_images": 2}]
    page.screenshot(path=str(tmp_path / "desktop.png"), full_page=True)
    tab.only_this_server()


def test_a_refused_request_shows_the_server_message(tab: Page) -> None:
    page = tab.open_with_key()
    page.get_by_label("Model", exact=True).select_option("tiny-flux")
    page.get_by_label("Seed", exact=True).fill("-5")
    page.get_by_role("button", name="Generate", exact=True).click()
    alert = page.get_by_role("alert")
    alert.filter(has_text="Invalid value for 'seed'").wait_for()
    assert "it must be at least 0" in alert.text_content()
    tab.only_this_server()


def test_a_wrong_key_shows_the_server_message(tab: Page) -> None:
    page = tab.page
    page.goto(tab.site.base_url + "/playground", wait_until="domcontentloaded")
    key = page.get_by_label("API key", exact=True)
    key.fill("sk-wrong-key-000")
    key.press("Tab")
    page.get_by_role("alert").filter(has_text="key").wait_for()
    tab.only_this_server()


def test_fits_a_phone_screen(browser: Any, site: RunningServer, tmp_path: Path) -> None:
    phone = Page(browser, site, viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                 has_touch=True)
    try:
        page = phone.open_with_key()
        page.get_by_label("Size", exact=True).select_option("custom")  # the widest form: the custom size shown
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        phone.only_this_server()
    finally:
        phone.context.close()

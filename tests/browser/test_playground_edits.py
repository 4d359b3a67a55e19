"""Edits in the playground (`/playground`, edit mode): upload an image, paint a mask, `POST /v1/images/edits`.

Headless Chromium as in `test_playground` (same skip / IMAGESERVE_TEST_REQUIRE_BROWSER rules, its fixtures), against
a server with a simulated local model. The multipart request the page sends is read back and checked: the mask
is a PNG of the image's size, alpha 0 where the mouse painted and 255 elsewhere; no paint, no mask.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from email import message_from_bytes
from email.policy import HTTP
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.browser.test_playground import GENERATION_TIMEOUT_MS, Page, _with_playground
from tests.browser.test_playground import browser as browser  # noqa: F401 (the fixture, shared)
from tests.support.constants import TEST_KEYS
from tests.support.server_harness import RunningServer, running_server

pytestmark = pytest.mark.browser

SIM = {"kind": "simulated", "time_scale": 0.001, "sizes": ["256x256"], "custom_sizes": True,
       "extra_params": ["seed", "num_inference_steps"]}
SIDE = 256


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[RunningServer]:
    with running_server(_with_playground, data_dir=tmp_path_factory.mktemp("data"), model_cache=model_cache,
                        api_keys=TEST_KEYS, default_model="tiny-flux", models={"sim": SIM}) as running:
        yield running


@pytest.fixture
def tab(browser: Any, site: RunningServer) -> Iterator[Page]:  # noqa: F811 (the imported fixture)
    opened = Page(browser, site, viewport={"width": 1280, "height": 900})
    try:
        yield opened
    finally:
        opened.context.close()


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    """A 256x256 PNG: a horizontal gradient over a vertical one."""
    ramp = np.linspace(0, 255, SIDE, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (SIDE, 1)), np.tile(ramp[:, None], (1, SIDE)),
                       np.full((SIDE, SIDE), 128, np.uint8)], axis=-1)
    path = tmp_path / "input.png"
    Image.fromarray(pixels).save(path)
    return path


def _screenshot(page: Any, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    folder = os.environ.get("IMAGESERVE_TEST_SCREENSHOTS")  # to keep them: a folder outside pytest's tmp
    if folder:
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def _multipart(request: tuple[str, bytes]) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart request: name -> (file name or None, bytes)."""
    content_type, body = request
    assert content_type and content_type.startswith("multipart/form-data; boundary="), content_type
    assert body, "no body"
    message = message_from_bytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body, policy=HTTP)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        assert name not in fields, f"{name} sent twice"
        fields[name] = (part.get_filename(), part.get_payload(decode=True))
    return fields


def _edit_mode(tab: Page, picture: Path) -> Any:
    tab.page.add_init_script(WATCH_EDITS)
    page = tab.open_with_key()
    page.get_by_role("radio", name="Edit", exact=True).check()
    assert page.get_by_role("button", name="Edit image", exact=True).is_visible()
    assert page.get_by_role("button", name="Generate", exact=True).count() == 0
    page.get_by_label("Model", exact=True).select_option("sim")
    page.get_by_label("Prompt", exact=True).fill("a blue door")
    page.get_by_label("Image", exact=True).set_input_files(str(picture))
    page.locator("#edit-stage:not([hidden])").wait_for()
    return page


# Chromium reports no body for a fetch whose FormData holds files (and a route sees the files' parts empty), so
# the page's fetch is watched: each FormData sent to /v1/images/edits is encoded by the browser's own multipart
# encoder (a Request made from it) and kept, then the real request goes out unchanged.
WATCH_EDITS = """
(() => {
  const original = window.fetch;
  window.sentEdits = [];
  window.fetch = async function (input, init) {
    if (String(input).endsWith("/v1/images/edits") && init && init.body instanceof FormData) {
      const encoded = new Request(location.href, { method: "POST", body: init.body });
      const bytes = new Uint8Array(await encoded.arrayBuffer());
      let binary = "";
      for (const byte of bytes) binary += String.fromCharCode(byte);
      window.sentEdits.push({ type: encoded.headers.get("content-type"), body: btoa(binary) });
    }
    return original.apply(this, arguments);
  };
})();
"""


def _sent_edit(page: Any) -> tuple[str, bytes]:
    """Click "Edit image"; the multipart content type and body the page sent."""
    with page.expect_request(lambda request: request.url.endswith("/v1/images/edits")) as went:
        page.get_by_role("button", name="Edit image", exact=True).click()
    wire = went.value
    assert wire.method == "POST"
    assert wire.header_value("content-type").startswith("multipart/form-data; boundary=")
    sent = page.evaluate("window.sentEdits")
    assert len(sent) == 1
    return sent[0]["type"], base64.b64decode(sent[0]["body"])


def _wait_for_result(page: Any) -> Any:
    results = page.get_by_role("region", name="Results", exact=True)
    results.locator("img.final").wait_for(timeout=GENERATION_TIMEOUT_MS)
    page.wait_for_function("document.querySelector('#current img.final').naturalWidth > 0")
    assert results.locator("img.final").evaluate("img => [img.naturalWidth, img.naturalHeight]") == [SIDE, SIDE]
    assert results.locator('[data-field="latency"]').text_content().endswith(" ms")
    assert results.locator('[data-field="batch"]').text_content() == "1"
    assert results.get_by_role("link", name="Download").get_attribute("href").startswith("data:image/png;base64,")
    assert page.get_by_role("region", name="History").locator("img").count() == 1
    assert page.get_by_role("alert").text_content() == ""
    return results


def test_edit_mode_offers_only_the_models_that_edit(tab: Page) -> None:
    page = tab.open_with_key()
    options = page.locator("#model option")
    generate_ids = options.evaluate_all("options => options.map(o => o.value)")
    assert {"dall-e-3", "imagen-3", "sim", "tiny-flux"} <= set(generate_ids)
    page.get_by_role("radio", name="Edit", exact=True).check()
    assert page.get_by_label("Image", exact=True).is_visible()
    edit_ids = options.evaluate_all("options => options.map(o => o.value)")
    assert set(edit_ids) == {"dall-e-2", "stable-diffusion-3", "flux-pro", "flux-dev", "ideogram-2", "tiny-sd3",
                             "tiny-flux", "sim"}
    hosted = page.locator('#model option[value="dall-e-2"]')
    assert hosted.is_disabled() and "no OpenAI API key is configured" in hosted.text_content()
    assert page.get_by_label("Size", exact=True).input_value() == ""  # "Same as the image"
    assert page.get_by_label("Strength", exact=True).input_value() == "0.7"
    # an edit without an image is refused on the page, before any request
    page.get_by_role("button", name="Edit image", exact=True).click()
    assert "Choose an image" in page.get_by_role("alert").text_content()
    page.get_by_role("radio", name="Generate", exact=True).check()
    assert page.get_by_label("Image", exact=True).is_hidden()
    assert page.get_by_role("button", name="Generate", exact=True).is_visible()
    assert options.evaluate_all("options => options.map(o => o.value)") == generate_ids
    assert not any(url.endswith("/v1/images/edits") for url in tab.urls)
    tab.only_this_server()


def test_paints_a_mask_and_sends_it_as_openai_wants(tab: Page, picture: Path, tmp_path: Path) -> None:
    page = _edit_mode(tab, picture)
    page.get_by_label("Seed", exact=True).fill("11")
    canvas = page.locator("#mask-canvas")
    box = canvas.bounding_box()
    scale = SIDE / box["width"]  # screen pixels -> image pixels
    y = box["y"] + box["height"] * 0.25
    page.mouse.move(box["x"] + box["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=12)
    page.mouse.up()
    assert "Mask painted" in page.locator("#mask-status").text_content()
    _screenshot(page, tmp_path, "edit-painted.png")
    request = _sent_edit(page)
    fields = _multipart(request)
    assert set(fields) == {"image", "mask", "model", "prompt", "n", "output_format", "response_format", "seed",
                           "strength", "stream", "partial_images"}
    text = {name: value.decode() for name, (filename, value) in fields.items() if filename is None}
    assert text == {"model": "sim", "prompt": "a blue door", "n": "1", "output_format": "png",
                    "response_format": "b64_json", "seed": "11", "strength": "0.7", "stream": "true",
                    "partial_images": "2"}
    assert fields["image"] == ("input.png", picture.read_bytes())  # the file as chosen
    assert fields["mask"][0] == "mask.png"
    mask = Image.open(io.BytesIO(fields["mask"][1]))
    assert mask.format == "PNG" and mask.size == (SIDE, SIDE) and mask.mode == "RGBA"
    alpha = np.asarray(mask.getchannel("A"))
    assert set(np.unique(alpha).tolist()) == {0, 255}
    row = round(SIDE * 0.25)
    brush = 32 * scale  # the default brush, in image pixels
    for x in range(round(SIDE * 0.2), round(SIDE * 0.6) + 1, 4):  # along the stroke: transparent
        assert alpha[row, x] == 0, x
    painted = alpha == 0
    rows, columns = np.nonzero(painted)
    assert abs(rows.min() - (row - brush / 2)) <= 3 and abs(rows.max() - (row + brush / 2)) <= 3
    assert abs(columns.min() - (SIDE * 0.2 - brush / 2)) <= 3 and abs(columns.max() - (SIDE * 0.6 + brush / 2)) <= 3
    assert alpha[:, :round(SIDE * 0.2 - brush)].min() == 255 and alpha[round(row + brush):, :].min() == 255
    results = _wait_for_result(page)
    assert results.locator('[data-field="seed"]').text_content() == "11"
    assert results.get_by_role("link", name="Download").get_attribute("download") == "imageserve-sim-11.png"
    assert results.locator("img.final").get_attribute("alt") == "Image 1: a blue door"
    _screenshot(page, tmp_path, "edit-result.png")
    tab.only_this_server()


def test_without_paint_sends_no_mask_and_clear_mask_removes_it(tab: Page, picture: Path) -> None:
    page = _edit_mode(tab, picture)
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.click(box["x"] + 40, box["y"] + 40)  # a dot, then cleared
    assert "Mask painted" in page.locator("#mask-status").text_content()
    page.get_by_role("button", name="Clear mask", exact=True).click()
    assert "No mask" in page.locator("#mask-status").text_content()
    page.get_by_label("Strength", exact=True).fill("0.4")
    page.get_by_label("Size", exact=True).select_option("256x256")  # chosen: sent
    request = _sent_edit(page)
    fields = _multipart(request)
    assert "mask" not in fields
    assert fields["image"][1] == picture.read_bytes()
    assert fields["strength"][1] == b"0.4" and fields["size"][1] == b"256x256"
    assert "seed" not in fields  # left empty: the server picks one
    results = _wait_for_result(page)
    assert results.locator('[data-field="seed"]').text_content().isdigit()
    tab.only_this_server()


def test_a_refused_edit_shows_the_server_message(tab: Page, tmp_path: Path) -> None:
    page = tab.open_with_key()
    page.get_by_role("radio", name="Edit", exact=True).check()
    page.get_by_label("Model", exact=True).select_option("tiny-sd3")  # cannot inpaint: a mask is refused
    small = tmp_path / "small.png"
    Image.new("RGB", (SIDE, SIDE), (30, 90, 160)).save(small)
    page.get_by_label("Image", exact=True).set_input_files(str(small))
    page.locator("#edit-stage:not([hidden])").wait_for()
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.click(box["x"] + 50, box["y"] + 50)
    page.get_by_role("button", name="Edit image", exact=True).click()
    page.get_by_role("alert").filter(has_text="cannot inpaint").wait_for()
    tab.only_this_server()


def test_edit_mode_fits_a_phone_and_paints_by_touch(browser: Any, site: RunningServer,  # noqa: F811
                                                    picture: Path, tmp_path: Path) -> None:
    phone = Page(browser, site, viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                 has_touch=True)
    try:
        page = _edit_mode(phone, picture)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        canvas = page.locator("#mask-canvas")
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert "Mask painted" in page.locator("#mask-status").text_content()
        _screenshot(page, tmp_path, "edit-phone.png")
        phone.only_this_server()
    finally:
        phone.context.close()

"""ideogram-2 edits forwarded to Ideogram's 2.0 edit endpoint (`POST /edit`, multipart) through a real server and
the official client: the image and a mask black where to repaint, priced like generations. Ideogram's edit needs a
mask and it has no prompt-less remix, so edits without a mask (400 `mask`) and variations (400 `model`) are
refused with nothing sent upstream."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from PIL import Image

from pipelines.types import ImageEdit
from server.backends.vendors import ideogram
from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.edit_images import photo as noise_photo
from tests.support.edit_images import png, quarter_mask
from tests.support.emulators.common import Fail
from tests.support.emulators.ideogram_api import IdeogramEmulator
from tests.support.server_harness import RunningServer, running_server
from tests.vendors.conftest import FAST, KEYS

KEY = KEYS["ideogram"]


def photo(width: int, height: int):  # noqa: ANN201 - an image array
    return noise_photo(width, height, seed=5)


@pytest.fixture(scope="module")
def server(_ideogram_server: IdeogramEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    providers = {"ideogram": {"api_key": KEY, "base_url": _ideogram_server.base_url, **FAST}}
    with running_server(data_dir=tmp_path_factory.mktemp("ideogram-edits"), api_keys=TEST_KEYS,
                        providers=providers) as running:
        yield running


@pytest.fixture
def client(server: RunningServer, ideogram_emu: IdeogramEmulator) -> OpenAI:
    return OpenAI(base_url=server.api_url, api_key=TEST_KEY, max_retries=0)


def test_an_edit_goes_to_ideogram_with_the_mask_black_where_to_repaint(client: OpenAI,
                                                                      ideogram_emu: IdeogramEmulator) -> None:
    source = photo(512, 384)
    response = client.images.edit(model="ideogram-2", image=("a.png", png(source), "image/png"),
                                  mask=("m.png", quarter_mask(512, 384), "image/png"), prompt="a red hat", n=2,
                                  response_format="b64_json", extra_body={"seed": 2**31 + 5})
    assert len(response.data) == 2
    assert all(item.revised_prompt == "Magic: a striking, detailed image of a red hat" for item in response.data)
    perf = response.model_extra["perf"]
    assert perf["cost_usd"] == pytest.approx(0.08) and perf["size"] == "512x384"  # as a generation: per image
    (call,) = ideogram_emu.calls("edit")
    assert call.path == "/edit" and call.headers["api-key"] == KEY and not ideogram_emu.calls("generate")
    files = call.body.pop("files")
    assert call.body == {"prompt": "a red hat", "model": "V_2", "magic_prompt_option": "AUTO", "num_images": "2",
                         "seed": "5"}  # Ideogram's seeds are 31-bit: larger ones wrap, as for generations
    sent = Image.open(io.BytesIO(files["image_file"]))
    assert sent.format == "PNG" and sent.size == (512, 384)
    assert np.abs(np.asarray(sent.convert("RGB")).astype(int) - source).mean() < 2
    mask = np.asarray(Image.open(io.BytesIO(files["mask"])).convert("L"))
    assert mask.shape == (384, 512) and set(np.unique(mask)) == {0, 255}
    assert (mask[:180, :250] == 0).all() and (mask[200:, :] == 255).all() and (mask[:, 260:] == 255).all()


def test_edits_without_a_mask_and_variations_are_refused_before_anything_goes_upstream(
        client: OpenAI, ideogram_emu: IdeogramEmulator) -> None:
    image = ("a.png", png(photo(256, 256)), "image/png")
    with pytest.raises(openai.BadRequestError) as no_mask:
        client.images.edit(model="ideogram-2", image=image, prompt="a hat")
    assert no_mask.value.body["param"] == "mask" and "edits need a mask" in no_mask.value.body["message"]
    with pytest.raises(openai.BadRequestError) as variation:
        client.images.create_variation(model="ideogram-2", image=image)
    assert variation.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as negative:
        client.images.edit(model="ideogram-2", image=image, mask=("m.png", quarter_mask(256, 256), "image/png"),
                           prompt="a hat", extra_body={"negative_prompt": "blur"})
    assert negative.value.body["param"] == "negative_prompt"
    assert ideogram_emu.requests == []


def test_vendor_errors_map_as_for_generations(client: OpenAI, ideogram_emu: IdeogramEmulator) -> None:
    image = ("a.png", png(photo(256, 256)), "image/png")
    mask = ("m.png", quarter_mask(256, 256), "image/png")
    with pytest.raises(openai.BadRequestError) as unsafe:  # Ideogram's 422: the prompt failed the safety check
        client.images.edit(model="ideogram-2", image=image, mask=mask, prompt="something forbidden")
    assert unsafe.value.body["code"] == "content_policy_violation"
    ideogram_emu.script("edit", Fail(429, retry_after="5"))
    with pytest.raises(openai.RateLimitError) as limited:
        client.images.edit(model="ideogram-2", image=image, mask=mask, prompt="a hat")
    assert limited.value.response.headers["retry-after"] == "5"
    ideogram_emu.script("edit", Fail(500), Fail(503))  # retried, with the files sent again each time
    assert len(client.images.edit(model="ideogram-2", image=image, mask=mask, prompt="a hat").data) == 1
    assert len(ideogram_emu.calls("edit")) == 5 and ideogram_emu.calls("edit")[-1].body["files"]["mask"]
    ideogram_emu.script("edit", *[Fail(503)] * 3)
    with pytest.raises(openai.APIStatusError) as unavailable:
        client.images.edit(model="ideogram-2", image=image, mask=mask, prompt="a hat")
    assert unavailable.value.status_code == 502 and KEY not in str(unavailable.value.body)
    partial = client.images.edit(model="ideogram-2", image=image, mask=mask, prompt="unsafe-image here", n=2)
    assert len(partial.data) == 1  # a flagged image is left out, as for generations


def test_a_large_input_goes_as_jpeg_under_ideograms_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    mask = np.zeros((64, 64), bool)
    mask[:8, :8] = True
    small = ideogram.edit_files(ImageEdit(photo(64, 64), mask))
    assert small["image_file"][2] == "image/png" and small["mask"][2] == "image/png"
    monkeypatch.setattr(ideogram, "MAX_UPLOAD_BYTES", 4096)  # noise does not compress: the PNG is ~12 kB
    large = ideogram.edit_files(ImageEdit(photo(64, 64), mask))
    assert large["image_file"][0] == "image.jpg" and Image.open(io.BytesIO(large["image_file"][1])).format == "JPEG"
    assert large["mask"] == small["mask"]


async def test_the_emulator_refuses_what_ideogram_refuses(ideogram_emu) -> None:
    url = f"{ideogram_emu.base_url}/edit"
    auth = {"Api-Key": KEY}
    black_square = np.full((64, 64), 255, np.uint8)
    black_square[:16, :16] = 0
    files = {"image_file": ("i.png", png(photo(64, 64)), "image/png"), "mask": ("m.png", png(black_square),
                                                                                  "image/png")}
    good = {"prompt": "a hat", "model": "V_2"}
    grey = black_square.copy()
    grey[40, 40] = 128
    async with httpx.AsyncClient() as http:
        assert (await http.post(url, headers=auth, data=good, files=files)).status_code == 200
        assert (await http.post(url, headers={}, data=good, files=files)).status_code == 401
        for data in ({"prompt": "a hat"}, {"model": "V_2"}, {**good, "model": "V_2A"}, {**good, "resolution": "x"},
                     {**good, "num_images": "9"}, {**good, "seed": "-1"}, {**good, "magic_prompt_option": "YES"}):
            assert (await http.post(url, headers=auth, data=data, files=files)).status_code == 400, data
        for mask in (png(black_square[:32]), png(grey), png(np.full((64, 64), 255, np.uint8)), b"not an image"):
            bad = {**files, "mask": ("m.png", mask, "image/png")}
            assert (await http.post(url, headers=auth, data=good, files=bad)).status_code == 400
        no_mask = {"image_file": files["image_file"]}
        assert (await http.post(url, headers=auth, data=good, files=no_mask)).status_code == 400

"""Vendor forwarding end to end: a real server whose providers point at the loopback vendor emulators.

Called with raw httpx and with the official `openai` client, as a user would. The adapter tests
(`test_bfl.py` and friends) cover each vendor's protocol in detail; these check what crosses the HTTP
edge: our signed URLs and base64, `perf`, error shapes and headers, cancellation, concurrency, and that
our own validation runs before any vendor sees a request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.emulators.common import EmulatorBase, Fail, Truncated
from tests.support.server_harness import RunningServer, running_server
from tests.support.server_timing import parse_server_timing
from tests.vendors.conftest import KEYS

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
PROVIDERS = ("openai", "bfl", "ideogram", "google")
# Which emulator fixture and route serve a model's generation call.
UPSTREAM = {
    "dall-e-3": ("openai", "generate"),
    "dall-e-2": ("openai", "generate"),
    "flux-pro": ("bfl", "submit"),
    "ideogram-2": ("ideogram", "generate"),
    "imagen-3": ("google", "predict"),
}
PROVIDER_OF = {model: provider for model, (provider, _) in UPSTREAM.items()}
FAILURE_TUNING = {
    "timeout_seconds": 10.0,  # generous: the machine is shared; hangs are the adapter tests' business
    "max_retries": 2,
    "retry_backoff_seconds": 0.01,
    "retry_backoff_max_seconds": 0.02,
    "rate_limit_retry_after_seconds": 7,
}


def _providers(emulators: dict[str, EmulatorBase], keys: dict[str, str | None], **extra: dict[str, Any]) -> dict:
    providers: dict[str, dict[str, Any]] = {}
    for name in PROVIDERS:
        base_url = emulators[name].base_url + ("/v1" if name == "openai" else "")  # as in the openai SDK
        config: dict[str, Any] = {"base_url": base_url, **FAILURE_TUNING, **extra.get(name, {})}
        if keys.get(name) is not None:
            config["api_key"] = keys[name]
        providers[name] = config
    return providers


@pytest.fixture(scope="module")
def emulators(_openai_server, _bfl_server, _ideogram_server, _google_server) -> dict[str, EmulatorBase]:
    return {"openai": _openai_server, "bfl": _bfl_server, "ideogram": _ideogram_server, "google": _google_server}


@pytest.fixture
def emus(openai_emu, bfl_emu, ideogram_emu, google_emu) -> dict[str, EmulatorBase]:
    """Every emulator, reset (no requests logged, no scripted failures) for this test."""
    return {"openai": openai_emu, "bfl": bfl_emu, "ideogram": ideogram_emu, "google": google_emu}


@contextmanager
def _serve(tmp_path_factory: pytest.TempPathFactory, providers: dict, **settings: Any) -> Iterator[RunningServer]:
    with running_server(
        data_dir=tmp_path_factory.mktemp("data"),
        model_cache=settings.pop("model_cache", tmp_path_factory.mktemp("models")),
        api_keys=TEST_KEYS,
        default_model="tiny-flux",
        providers=providers,
        **settings,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def vendor_server(tmp_path_factory, emulators) -> Iterator[RunningServer]:
    """Every provider keyed and pointed at its emulator. OpenAI is asked for links, so they are re-hosted too."""
    providers = _providers(
        emulators, KEYS, openai={"response_format": "url"}, bfl={"poll_interval_seconds": 0.05}
    )
    with _serve(tmp_path_factory, providers) as running:
        yield running


@pytest.fixture(scope="module")
def client(vendor_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=vendor_server.api_url, api_key=TEST_KEY, max_retries=0, timeout=60)


def generate(server: RunningServer, *, timeout: float = 60, **body: Any) -> httpx.Response:
    return httpx.post(server.api_url + "/images/generations", json=body, headers=AUTH, timeout=timeout)


def fetch_png(server: RunningServer, url: str, emulators: dict[str, EmulatorBase]) -> Image.Image:
    """Our own signed link, fetched without credentials; never a vendor's link."""
    assert url.startswith(server.base_url + "/v1/images/files/")
    assert not any(url.startswith(emu.base_url) for emu in emulators.values())
    query = parse_qs(urlsplit(url).query)
    assert query.keys() >= {"expires", "sig"}
    response = httpx.get(url, timeout=30)  # no Authorization header
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def decode_png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


def assert_healthy(server: RunningServer, model: str = "imagen-3") -> None:
    """The server still answers a forwarded request after whatever the test did."""
    response = generate(server, model=model, prompt="a calm lake", response_format="b64_json")
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1


# --- 1. success, url and b64_json, perf ---------------------------------------------------------------

# model, request fields, the size the vendor makes (after size mapping), quality, price per image, revised?
SUCCESS_CASES = [
    ("dall-e-3", {"size": "1792x1024", "quality": "hd"}, "1792x1024", "hd", 0.08, True),
    ("dall-e-3", {"size": "1024x1024", "quality": "standard"}, "1024x1024", "standard", 0.04, True),
    ("dall-e-2", {"size": "512x512"}, "512x512", "standard", 0.018, False),
    ("dall-e-2", {"size": "256x256"}, "256x256", "standard", 0.016, False),
    ("flux-pro", {"size": "1200x672", "seed": 7}, "1216x672", "standard", 0.055, False),  # BFL's 32-grid
    ("ideogram-2", {"size": "1024x576"}, "1280x720", "standard", 0.04, True),  # nearest Ideogram resolution
    ("imagen-3", {}, "1024x1024", "standard", 0.04, False),
]
SUCCESS_IDS = [f"{case[0]}-{case[2]}-{case[3]}" for case in SUCCESS_CASES]


def _check_perf(perf: dict[str, Any], model: str, size: str, quality: str, cost: float) -> None:
    assert perf["model_used"] == model
    assert perf["size"] == size and perf["quality"] == quality
    assert perf["cost_usd"] == pytest.approx(cost)
    assert perf["latency_ms"] > 0 and perf["request_id"].startswith("req_img_")


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
@pytest.mark.parametrize(("model", "fields", "size", "quality", "price", "revised"), SUCCESS_CASES, ids=SUCCESS_IDS)
def test_success_with_raw_http(vendor_server, emus, response_format, model, fields, size, quality, price, revised):
    response = generate(vendor_server, model=model, prompt="a red fox", response_format=response_format, **fields)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created"] > 0 and len(body["data"]) == 1
    item = body["data"][0]
    if response_format == "url":
        assert "b64_json" not in item
        image = fetch_png(vendor_server, item["url"], emus)
    else:
        assert "url" not in item
        image = decode_png(item["b64_json"])
    assert f"{image.width}x{image.height}" == size
    _check_perf(body["perf"], model, size, quality, price)
    assert body["perf"]["request_id"] == response.headers["x-request-id"]
    if revised:
        assert "a red fox" in item["revised_prompt"] and item["revised_prompt"] != "a red fox"
    else:
        assert "revised_prompt" not in item
    if model == "flux-pro":
        assert item["seed"] == 7
    provider, route = UPSTREAM[model]
    assert len(emus[provider].calls(route)) == 1


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
@pytest.mark.parametrize(("model", "fields", "size", "quality", "price", "revised"), SUCCESS_CASES, ids=SUCCESS_IDS)
def test_success_with_the_openai_client(
    vendor_server, client, emus, response_format, model, fields, size, quality, price, revised
):
    extra_body = {"seed": fields["seed"]} if "seed" in fields else None
    kwargs = {key: fields[key] for key in ("size", "quality") if key in fields}
    result = client.images.generate(
        model=model, prompt="a red fox", response_format=response_format, extra_body=extra_body, **kwargs
    )
    assert len(result.data) == 1
    item = result.data[0]
    if response_format == "url":
        assert item.b64_json is None
        image = fetch_png(vendor_server, item.url, emus)
    else:
        assert item.url is None
        image = decode_png(item.b64_json)
    assert f"{image.width}x{image.height}" == size
    _check_perf((result.model_extra or {})["perf"], model, size, quality, price)
    assert (item.revised_prompt is not None) is revised


def test_url_answers_are_rehosted_not_vendor_links(vendor_server, emus):
    """Vendor links (OpenAI asked for `url`, BFL samples, Ideogram) are downloaded and served by us."""
    for model in ("dall-e-2", "flux-pro", "ideogram-2"):
        response = generate(vendor_server, model=model, prompt="a red fox")
        assert response.status_code == 200, response.text
        fetch_png(vendor_server, response.json()["data"][0]["url"], emus)
    files = [call for emu in emus.values() for call in emu.calls("file")]
    assert len(files) == 3  # each vendor link was fetched exactly once, by the server, never by the client
    assert all("authorization" not in f.headers and "x-key" not in f.headers for f in files)
    assert emus["openai"].calls("generate")[0].body["response_format"] == "url"


def test_vendor_png_is_transcoded_on_request(vendor_server, emus):
    response = generate(vendor_server, model="flux-pro", prompt="a red fox", size="512x512", output_format="jpeg")
    assert response.status_code == 200, response.text
    url = response.json()["data"][0]["url"]
    assert url.startswith(vendor_server.base_url + "/v1/images/files/")
    fetched = httpx.get(url, timeout=30)
    assert fetched.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(fetched.content)).size == (512, 512)


@pytest.mark.parametrize("model", ["ideogram-2", "imagen-3"])
def test_negative_prompt_reaches_the_vendor(vendor_server, emus, model):
    response = generate(vendor_server, model=model, prompt="a red fox", negative_prompt="blurry")
    assert response.status_code == 200, response.text
    provider, route = UPSTREAM[model]
    body = emus[provider].calls(route)[0].body
    sent = body["image_request"]["negative_prompt"] if model == "ideogram-2" else body["parameters"]["negativePrompt"]
    assert sent == "blurry"


# --- 2. n > 1 ------------------------------------------------------------------------------------------

N_CASES = [
    # model, n, fields, size made, price per image
    ("dall-e-2", 3, {"size": "256x256"}, "256x256", 0.016),
    ("flux-pro", 3, {"size": "1024x1024", "seed": 40}, "1024x1024", 0.055),
    ("ideogram-2", 4, {"size": "1024x1024"}, "1024x1024", 0.04),
    ("imagen-3", 4, {}, "1024x1024", 0.04),
]


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
@pytest.mark.parametrize(("model", "n", "fields", "size", "price"), N_CASES, ids=[c[0] for c in N_CASES])
def test_n_images(vendor_server, client, emus, response_format, model, n, fields, size, price):
    extra_body = {"seed": fields["seed"]} if "seed" in fields else None
    kwargs = {"size": fields["size"]} if "size" in fields else {}
    raw = client.images.with_raw_response.generate(
        model=model, prompt="a red fox", n=n, response_format=response_format, extra_body=extra_body, **kwargs
    )
    result = raw.parse()
    assert len(result.data) == n
    if response_format == "url":
        urls = [item.url for item in result.data]
        assert len(set(urls)) == n
        images = [fetch_png(vendor_server, url, emus) for url in urls]
    else:
        images = [decode_png(item.b64_json) for item in result.data]
    assert all(f"{image.width}x{image.height}" == size for image in images)
    _check_perf((result.model_extra or {})["perf"], model, size, "standard", price * n)

    provider, route = UPSTREAM[model]
    calls = emus[provider].calls(route)
    if model == "flux-pro":  # one task per image, seeds counting up from the one given
        assert len(calls) == n
        assert sorted(call.body["seed"] for call in calls) == [40, 41, 42]
        assert sorted(item.model_extra["seed"] for item in result.data) == [40, 41, 42]
    else:  # one upstream call asking for n
        assert len(calls) == 1
        body = calls[0].body
        asked = {"dall-e-2": lambda: body["n"], "ideogram-2": lambda: body["image_request"]["num_images"],
                 "imagen-3": lambda: body["parameters"]["sampleCount"]}[model]()
        assert asked == n


def test_partly_filtered_imagen_answer_returns_and_bills_what_came(vendor_server, client, emus):
    result = client.images.generate(model="imagen-3", prompt="filter-some of these", n=3, response_format="b64_json")
    assert len(result.data) == 1
    perf = (result.model_extra or {})["perf"]
    assert perf["cost_usd"] == pytest.approx(0.04)


# --- 3. error mapping ------------------------------------------------------------------------------------

POLICY_CASES = [
    ("dall-e-3", "something forbidden"),
    ("dall-e-2", "something forbidden"),
    ("flux-pro", "something forbidden"),  # Request Moderated
    ("flux-pro", "unsafe-output please"),  # Content Moderated
    ("ideogram-2", "something forbidden"),  # 422 safety check
    ("ideogram-2", "all-unsafe images"),  # every image flagged
    ("imagen-3", "something forbidden"),  # 400 Responsible AI message
    ("imagen-3", "filter-all of them"),  # every image filtered
]


@pytest.mark.parametrize(("model", "prompt"), POLICY_CASES)
def test_content_policy_is_a_400(vendor_server, client, emus, model, prompt):
    with pytest.raises(openai.BadRequestError) as error:
        client.images.generate(model=model, prompt=prompt)
    assert error.value.status_code == 400
    assert error.value.type == "content_policy_violation" and error.value.code == "content_policy_violation"
    raw = generate(vendor_server, model=model, prompt=prompt)
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "content_policy_violation"
    assert_healthy(vendor_server, model)


@pytest.mark.parametrize(("retry_after", "expected"), [("12", 12), (None, 7)], ids=["header", "default"])
@pytest.mark.parametrize("model", list(UPSTREAM))
def test_vendor_429_is_our_429_with_retry_after(vendor_server, emus, model, retry_after, expected):
    provider, route = UPSTREAM[model]
    emus[provider].script(route, Fail(429, retry_after=retry_after))
    response = generate(vendor_server, model=model, prompt="a red fox")
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["type"] == "rate_limit_exceeded" and error["retry_after"] == expected
    assert response.headers["retry-after"] == str(expected)
    assert KEYS[provider] not in response.text  # the scripted vendor body echoes the key
    assert len(emus[provider].calls(route)) == 1  # a 429 is handed back, not retried
    assert_healthy(vendor_server, model)


def test_vendor_429_raises_rate_limit_error_in_the_openai_client(client, emus):
    emus["bfl"].script("submit", Fail(429, retry_after="3"))
    with pytest.raises(openai.RateLimitError) as error:
        client.images.generate(model="flux-pro", prompt="a red fox")
    assert error.value.status_code == 429 and error.value.type == "rate_limit_exceeded"
    assert error.value.response.headers["retry-after"] == "3"
    assert error.value.body["retry_after"] == 3  # the SDK exposes the `error` object as `body`


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("model", list(UPSTREAM))
def test_persistent_5xx_is_a_502_after_bounded_retries(vendor_server, client, emus, model, status):
    provider, route = UPSTREAM[model]
    emus[provider].script(route, *[Fail(status)] * 3)  # max_retries=2: three attempts in all
    with pytest.raises(openai.InternalServerError) as error:
        client.images.generate(model=model, prompt="a red fox")
    assert error.value.status_code == 502 and error.value.type == "upstream_error"
    assert KEYS[provider] not in error.value.response.text
    assert len(emus[provider].calls(route)) == 3
    assert_healthy(vendor_server, model)


@pytest.mark.parametrize("model", list(UPSTREAM))
def test_one_5xx_then_success(vendor_server, emus, model):
    provider, route = UPSTREAM[model]
    emus[provider].script(route, Fail(502))
    response = generate(vendor_server, model=model, prompt="a red fox")
    assert response.status_code == 200, response.text
    assert len(emus[provider].calls(route)) == 2


WRONG_KEYS = {
    "openai": "sk-WRONG-openai-key-31337",
    "bfl": "bfl-WRONG-key-31337",
    "ideogram": "ideo-WRONG-key-31337",
    "google": "AIza-WRONG-google-31337",
}
SETTING = {p: f"IMAGESERVE_{p.upper()}_API_KEY" for p in PROVIDERS}
PROVIDER_NAME = {"openai": "OpenAI", "bfl": "Black Forest Labs", "ideogram": "Ideogram", "google": "Google"}


@pytest.fixture(scope="module")
def wrong_key_server(tmp_path_factory, emulators) -> Iterator[RunningServer]:
    with _serve(tmp_path_factory, _providers(emulators, WRONG_KEYS)) as running:
        yield running


@pytest.mark.parametrize("model", list(UPSTREAM))
def test_wrong_vendor_key_is_a_502_naming_the_setting(wrong_key_server, emus, model):
    provider, route = UPSTREAM[model]
    response = generate(wrong_key_server, model=model, prompt="a red fox")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "upstream_error"
    assert PROVIDER_NAME[provider] in error["message"] and SETTING[provider] in error["message"]
    assert WRONG_KEYS[provider] not in response.text  # the vendor's 401/403/400 body echoes it
    assert all(key not in response.text for key in KEYS.values())
    assert len(emus[provider].calls(route)) == 1  # a key the vendor refused is not retried


def test_wrong_key_raises_internal_server_error_in_the_openai_client(wrong_key_server, emus):
    bad = openai.OpenAI(base_url=wrong_key_server.api_url, api_key=TEST_KEY, max_retries=0, timeout=60)
    with pytest.raises(openai.InternalServerError) as error:
        bad.images.generate(model="dall-e-3", prompt="a red fox")
    assert error.value.status_code == 502 and SETTING["openai"] in error.value.message
    assert WRONG_KEYS["openai"] not in str(error.value) and WRONG_KEYS["openai"] not in error.value.response.text


def test_model_without_a_provider_key_is_a_503_naming_the_env_var(tmp_path_factory, emus):
    keys = {"openai": KEYS["openai"], "bfl": None, "ideogram": None, "google": None}
    with _serve(tmp_path_factory, _providers(emus, keys)) as server:
        models = httpx.get(server.api_url + "/models", headers=AUTH).json()["data"]
        ready = {model["id"]: model for model in models}
        for model in ("flux-pro", "ideogram-2", "imagen-3"):
            setting = SETTING[PROVIDER_OF[model]]
            response = generate(server, model=model, prompt="a red fox")
            assert response.status_code == 503
            error = response.json()["error"]
            assert error["type"] == "model_unavailable" and error["param"] == "model"
            assert setting in error["message"]
            assert ready[model]["ready"] is False and setting in ready[model]["status"]
        assert ready["dall-e-3"]["ready"] is True
        # The keyed provider on the same server still works.
        response = generate(server, model="dall-e-3", prompt="a red fox", response_format="b64_json")
        assert response.status_code == 200, response.text
    assert not (emus["bfl"].requests or emus["ideogram"].requests or emus["google"].requests)


TRUNCATED_CASES = [("flux-pro", "png"), ("flux-pro", "jpeg"), ("ideogram-2", "png"), ("dall-e-2", "png")]


@pytest.mark.parametrize(("model", "output_format"), TRUNCATED_CASES, ids=[f"{m}-{f}" for m, f in TRUNCATED_CASES])
def test_truncated_vendor_image_is_a_502_not_a_500_or_a_broken_file(vendor_server, emus, model, output_format):
    """png: no transcoding, so the broken bytes would reach the client; jpeg: transcoding would fail (500)."""
    provider, _ = UPSTREAM[model]
    emus[provider].script("file", Truncated())
    response = generate(vendor_server, model=model, prompt="a red fox", output_format=output_format)
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["type"] == "upstream_error" and error["code"] == "upstream_bad_response"
    assert PROVIDER_NAME[provider] in error["message"]
    assert len(emus[provider].calls("file")) == 1
    assert_healthy(vendor_server, model)


# --- 4. a client that goes away cancels the upstream polling -------------------------------------------


async def _settle(count: Callable[[], int], *, quiet_for: float, deadline: float = 20.0) -> int:
    """Wait until `count()` has not changed for `quiet_for` seconds (an ordering check, not a timing one)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    last, since = count(), loop.time()
    while loop.time() < give_up:
        await asyncio.sleep(quiet_for / 5)
        now = count()
        if now != last:
            last, since = now, loop.time()
        elif loop.time() - since >= quiet_for:
            return now
    raise AssertionError(f"polling never stopped (still counting at {last})")


async def _wait_until(condition: Callable[[], bool], what: str, deadline: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while not condition():
        if loop.time() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("how", ["cancelled", "openai-client-timeout"])
async def test_client_disconnect_cancels_bfl_polling(vendor_server, emus, how):
    bfl = emus["bfl"]
    bfl.pending_polls = 10**9  # the tasks stay Pending until the test says otherwise
    body = {"model": "flux-pro", "prompt": "a slow fox", "n": 2}
    if how == "cancelled":
        async with httpx.AsyncClient(headers=AUTH, timeout=60) as http:
            post = asyncio.ensure_future(http.post(vendor_server.api_url + "/images/generations", json=body))
            await _wait_until(lambda: len(bfl.calls("submit")) == 2 and len(bfl.calls("poll")) >= 4, "polling")
            # The client gives up once both tasks are being polled: cancelling the request drops its connection.
            post.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await post
    else:
        impatient = openai.AsyncOpenAI(base_url=vendor_server.api_url, api_key=TEST_KEY, max_retries=0, timeout=3)
        async with impatient:
            with pytest.raises(openai.APITimeoutError):
                await impatient.images.generate(model="flux-pro", prompt="a slow fox", n=2)
        assert len(bfl.calls("submit")) == 2
    polls = await _settle(lambda: len(bfl.calls("poll")), quiet_for=1.0)  # 20 poll intervals with no poll
    assert polls >= 4
    bfl.pending_polls = 0
    assert all(task.sample is None for task in bfl.tasks.values())  # nothing was downloaded
    assert not bfl.calls("file")
    await asyncio.to_thread(assert_healthy, vendor_server, "flux-pro")


# --- 5. many slow forwarded requests do not block local generation --------------------------------------

CONCURRENT = 100


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory, emulators, model_cache: Path) -> Iterator[RunningServer]:
    """BFL allows all the requests in flight at once; tiny-flux is loaded before the test starts."""
    providers = _providers(
        emulators,
        KEYS,
        bfl={"poll_interval_seconds": 0.25, "max_concurrency": CONCURRENT + 20, "max_connections": 128},
    )
    with _serve(tmp_path_factory, providers, model_cache=model_cache, preload=["tiny-flux"]) as running:
        yield running


@pytest.mark.slow
async def test_slow_vendor_does_not_block_local_generation(busy_server, emus):
    bfl = emus["bfl"]
    bfl.pending_polls = 10**9  # every BFL task stays Pending until released below
    url = busy_server.api_url + "/images/generations"
    limits = httpx.Limits(max_connections=CONCURRENT + 10, max_keepalive_connections=CONCURRENT + 10)
    async with httpx.AsyncClient(headers=AUTH, timeout=120, limits=limits) as http:
        forwarded = [
            asyncio.create_task(http.post(url, json={"model": "flux-pro", "prompt": f"fox {i}", "size": "256x256"}))
            for i in range(CONCURRENT)
        ]
        try:
            # All of them are upstream at once and polling.
            await _wait_until(lambda: len(bfl.calls("submit")) == CONCURRENT, "every task to be submitted")
            await _wait_until(lambda: len({call.body["prompt"] for call in bfl.calls("submit")}) == CONCURRENT,
                              "distinct submissions")
            local = await http.post(url, json={"model": "tiny-flux", "prompt": "a lighthouse", "size": "256x256",
                                               "num_inference_steps": 1, "response_format": "b64_json"})
            assert local.status_code == 200, local.text
            assert decode_png(local.json()["data"][0]["b64_json"]).size == (256, 256)
            # The local image came back while every forwarded request was still waiting on the vendor.
            assert not any(task.done() for task in forwarded)
            assert not bfl.calls("file")
        finally:
            bfl.pending_polls = 0  # release the vendor: every task is Ready at its next poll
        responses = await asyncio.gather(*forwarded)
    assert [r.status_code for r in responses] == [200] * CONCURRENT, [r.text for r in responses if r.status_code != 200]
    assert all(r.json()["perf"]["model_used"] == "flux-pro" for r in responses)
    assert len(bfl.calls("submit")) == CONCURRENT and len(bfl.calls("file")) == CONCURRENT


# --- 6. our validation runs first ------------------------------------------------------------------------

REJECTED = [
    ("flux-pro", {"quality": "hd"}, "quality"),
    ("dall-e-3", {"n": 2}, "n"),
    ("dall-e-2", {"size": "1792x1024"}, "size"),
    ("dall-e-2", {"style": "vivid"}, "style"),
    ("flux-pro", {"n": 5}, "n"),
    ("flux-pro", {"size": "1000x1000"}, "size"),  # not a multiple of 16
    ("flux-pro", {"num_inference_steps": 4}, "num_inference_steps"),  # a local-only extension
    ("ideogram-2", {"guidance_scale": 3.0}, "guidance_scale"),
    ("imagen-3", {"size": "512x512"}, "size"),
    ("imagen-3", {"seed": 1}, "seed"),
    ("dall-e-3", {"prompt": ""}, "prompt"),
]


@pytest.mark.parametrize(("model", "fields", "param"), REJECTED, ids=[f"{m}-{p}" for m, _, p in REJECTED])
def test_rejected_requests_never_reach_the_vendor(vendor_server, client, emus, model, fields, param):
    body = {"model": model, "prompt": "a red fox", **fields}
    response = generate(vendor_server, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request" and error["param"] == param
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(**{k: v for k, v in body.items() if k in ("model", "prompt", "n", "size",
                                                                              "quality", "style")},
                               extra_body={k: v for k, v in fields.items()
                                           if k in ("num_inference_steps", "guidance_scale", "seed")} or None)
    assert raised.value.param == param
    assert all(not emu.requests for emu in emus.values())


# --- a remapped OpenAI model -------------------------------------------------------------------------


def test_a_retired_model_remapped_to_gpt_image_reports_what_really_made_it(tmp_path_factory, emulators, emus):
    """dall-e-3 mapped onto a GPT image model: parameters translated, perf names the upstream model."""
    providers = _providers(emulators, KEYS, openai={"models": {"dall-e-3": "gpt-image-2"}})
    with _serve(tmp_path_factory, providers) as server:
        response = generate(server, model="dall-e-3", prompt="a kite", size="1792x1024", quality="hd")
        assert response.status_code == 200, response.text
        perf = response.json()["perf"]
        assert perf["model_used"] == "dall-e-3" and perf["provider"] == "openai"
        assert perf["upstream_model"] == "gpt-image-2"
        assert perf["size"] == "1536x1024"  # the nearest size a GPT image model makes
        assert perf["cost_usd"] == pytest.approx(0.08)  # our price table, for our model id
        sent = next(r.body for r in emus["openai"].requests if r.method == "POST")
        assert sent["model"] == "gpt-image-2" and sent["quality"] == "high"
        assert "response_format" not in sent and "style" not in sent


# --- waiting for a busy provider is bounded ---------------------------------------------------------------


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory, emulators) -> Iterator[RunningServer]:
    """BFL allows one task in flight, and a request waits at most half a second for it."""
    providers = _providers(
        emulators,
        KEYS,
        bfl={"max_concurrency": 1, "queue_timeout_seconds": 0.5, "poll_interval_seconds": 0.05},
    )
    with _serve(tmp_path_factory, providers) as running:
        yield running


async def test_a_request_that_cannot_get_a_vendor_slot_is_a_503(one_slot_server, emus):
    bfl = emus["bfl"]
    bfl.pending_polls = 10**9  # the first task holds the only slot until released below
    url = one_slot_server.api_url + "/images/generations"
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as http:  # an endless wait fails, not hangs
        holder = asyncio.ensure_future(http.post(url, json={"model": "flux-pro", "prompt": "a slow fox"}))
        try:
            await _wait_until(lambda: bool(bfl.calls("poll")), "the first task to be polled")
            refused = await http.post(url, json={"model": "flux-pro", "prompt": "a second fox"})
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["type"] == "server_overloaded" and "Black Forest Labs" in error["message"]
            assert refused.headers["retry-after"] == "7"  # rate_limit_retry_after_seconds in FAILURE_TUNING
            assert len(bfl.calls("submit")) == 1  # the refused request never reached the vendor
        finally:
            bfl.pending_polls = 0
        first = await holder
    assert first.status_code == 200, first.text
    await asyncio.to_thread(assert_healthy, one_slot_server, "flux-pro")


# --- 7. Server-Timing: where a forwarded request's time went -----------------------------------------------


@pytest.mark.parametrize(("response_format", "stored"), [("b64_json", False), ("url", True)])
@pytest.mark.parametrize("model", ["dall-e-3", "dall-e-2"])
def test_a_forwarded_answer_times_upstream_not_queue_or_device(vendor_server, emus, model, response_format, stored):
    before = _stage_counts(vendor_server, model)
    response = generate(vendor_server, model=model, prompt="a red fox", response_format=response_format)
    assert response.status_code == 200, response.text
    stages = parse_server_timing(response.headers["server-timing"])
    assert list(stages) == ["auth", "upstream", "encode", *(["store"] if stored else []), "total"]
    assert all(value >= 0 for value in stages.values())
    assert sum(value for name, value in stages.items() if name != "total") <= stages["total"] + 1.0
    after = _stage_counts(vendor_server, model)
    added = {stage: after[stage] - before.get(stage, 0) for stage in after if after[stage] != before.get(stage, 0)}
    assert added == dict.fromkeys(stages, 1)  # each stage of the header, observed once; no queue or device


def test_a_failed_forwarded_request_still_says_how_long_it_took(vendor_server, emus):
    emus["openai"].script("generate", Fail(429))
    response = generate(vendor_server, model="dall-e-3", prompt="a red fox")
    assert response.status_code == 429
    assert list(parse_server_timing(response.headers["server-timing"])) == ["auth", "total"]


def _stage_counts(server: RunningServer, model: str) -> dict[str, float]:
    scrape = httpx.get(server.base_url + "/metrics", timeout=30).text
    return {sample.labels["stage"]: sample.value
            for family in text_string_to_metric_families(scrape) if family.name == "imageserve_stage_seconds"
            for sample in family.samples
            if sample.name == "imageserve_stage_seconds_count" and sample.labels["model"] == model}

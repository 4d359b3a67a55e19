"""Black Forest Labs adapter against the BFL emulator: submit, poll, download; n concurrent tasks."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipelines.errors import QueueFull
from server.api.errors import headers_of, status_of
from server.backends.vendors.bfl import polling_url_allowed
from server.errors import ContentPolicyViolation, RateLimitExceeded, UpstreamError
from tests.support.emulators.common import Fail, Hang, Malformed, Truncated
from tests.vendors.conftest import KEYS, assert_no_secret, make_settings, request

KEY = KEYS["bfl"]


async def test_n_images_are_n_tasks_with_polling(bfl_emu, backends):
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url))
    result = await backend.generate(request("flux-pro", n=3, size="1024x768", seed=42))
    submits = bfl_emu.calls("submit")
    assert len(submits) == 3 and all(s.path == "/v1/flux-pro-1.1" for s in submits)
    assert all(s.headers["x-key"] == KEY for s in submits)
    assert sorted(s.body["seed"] for s in submits) == [42, 43, 44]
    assert submits[0].body == {
        "prompt": "a red fox",
        "width": 1024,
        "height": 768,
        "output_format": "png",
        "seed": submits[0].body["seed"],
    }
    assert len(bfl_emu.calls("poll")) == 9  # two Pending answers, then Ready, per task
    assert all(p.headers["x-key"] == KEY for p in bfl_emu.calls("poll"))
    assert all("x-key" not in f.headers for f in bfl_emu.calls("file"))  # signed links get no key
    assert (result.width, result.height) == (1024, 768) and len(result.images) == 3
    assert sorted(i.seed for i in result.images) == [42, 43, 44]


async def test_size_is_fitted_to_the_vendor_grid(bfl_emu, backends):
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url, endpoint="flux-dev"))
    result = await backend.generate(request("flux-pro", size="2048x1152"))
    sent = bfl_emu.calls("submit")[0]
    assert sent.path == "/v1/flux-dev" and (sent.body["width"], sent.body["height"]) == (1440, 800)
    assert (result.width, result.height) == (1440, 800)


@pytest.mark.parametrize("prompt", ["something forbidden", "unsafe-output please"])
async def test_moderation(bfl_emu, backends, prompt):
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url))
    with pytest.raises(ContentPolicyViolation):
        await backend.generate(request("flux-pro", prompt=prompt))


async def test_task_error(bfl_emu, backends):
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url))
    with pytest.raises(UpstreamError, match="task failed"):
        await backend.generate(request("flux-pro", prompt="task-error"))


@pytest.mark.parametrize(("retry_after", "expected"), [("12", 12), (None, 7)])
async def test_rate_limit(bfl_emu, backends, retry_after, expected):
    bfl_emu.script("submit", Fail(429, retry_after=retry_after))
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url))
    with pytest.raises(RateLimitExceeded) as caught:
        await backend.generate(request("flux-pro"))
    assert caught.value.retry_after == expected
    assert_no_secret(caught.value, KEY)


async def test_5xx_then_success_on_submit_poll_and_download(bfl_emu, backends):
    bfl_emu.script("submit", Fail(500))
    bfl_emu.script("poll", Fail(503), Hang())
    bfl_emu.script("file", Fail(502))
    # One poll hangs until the timeout; the other calls answer at once, and must not time out on a loaded
    # machine, since the submit count is exact: a timeout far above a loopback answer, paid once, by the hang.
    backend = await backends(
        "flux-pro", make_settings("bfl", bfl_emu.base_url, timeout_seconds=1.0, max_retries=2)
    )
    result = await backend.generate(request("flux-pro"))
    assert len(result.images) == 1 and len(bfl_emu.calls("submit")) == 2


async def test_persistent_5xx(bfl_emu, backends):
    bfl_emu.script("submit", *[Fail(500)] * 3)
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url))
    with pytest.raises(UpstreamError) as caught:
        await backend.generate(request("flux-pro"))
    assert len(bfl_emu.calls("submit")) == 3 and status_of(caught.value) == 502
    assert_no_secret(caught.value, KEY)


async def test_hung_upstream(bfl_emu, backends):
    bfl_emu.script("poll", Hang(), Hang())
    backend = await backends(
        "flux-pro", make_settings("bfl", bfl_emu.base_url, timeout_seconds=0.2, max_retries=1)
    )
    with pytest.raises(UpstreamError, match="timed out"):
        await backend.generate(request("flux-pro"))


async def test_task_never_ready(bfl_emu, backends):
    bfl_emu.pending_polls = 10_000
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url, max_poll_seconds=0.2))
    with pytest.raises(UpstreamError, match="not ready"):
        await backend.generate(request("flux-pro"))


async def test_wrong_key(bfl_emu, backends, caplog):
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url, api_key="bfl-wrong-999"))
    with pytest.raises(UpstreamError) as caught:
        await backend.generate(request("flux-pro", n=2))
    assert "IMAGESERVE_BFL_API_KEY" in caught.value.message and "Black Forest Labs" in caught.value.message
    assert_no_secret(caught.value, "bfl-wrong-999", KEY)
    assert "bfl-wrong-999" not in caplog.text


@pytest.mark.parametrize("route", ["submit", "poll"])
async def test_malformed_body(bfl_emu, backends, route):
    bfl_emu.script(route, Malformed('{"unexpected": true}' if route == "poll" else "not json"))
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url))
    with pytest.raises(UpstreamError, match="malformed"):
        await backend.generate(request("flux-pro"))


async def test_polling_url_off_host_is_refused_and_gets_no_key(bfl_emu, backends):
    bfl_emu.polling_base = "http://127.0.0.2:9"  # not the configured host
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url))
    with pytest.raises(UpstreamError, match="polling URL"):
        await backend.generate(request("flux-pro"))
    assert bfl_emu.calls("poll") == []


def test_polling_host_rule():
    assert polling_url_allowed("https://api.bfl.ai/v1/get_result?id=1", "https://api.bfl.ai")
    assert polling_url_allowed("https://api.us1.bfl.ai/v1/get_result?id=1", "https://api.bfl.ai")
    assert polling_url_allowed("https://api.eu.bfl.ai/v1/get_result?id=1", "https://api.bfl.ai")
    assert not polling_url_allowed("http://api.us1.bfl.ai/v1/get_result", "https://api.bfl.ai")
    assert not polling_url_allowed("https://bfl.ai.evil.com/x", "https://api.bfl.ai")
    assert not polling_url_allowed("https://evilbfl.ai/x", "https://api.bfl.ai")
    assert not polling_url_allowed("https://user@api.bfl.ai/x", "https://api.bfl.ai")
    assert polling_url_allowed("http://127.0.0.1:8080/v1/get_result", "http://127.0.0.1:8080")
    assert not polling_url_allowed("http://127.0.0.1:8081/v1/get_result", "http://127.0.0.1:8080")


async def wait_for_polls(emulator, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(emulator.calls("poll")) < count:
        assert time.monotonic() < deadline, f"fewer than {count} polls arrived"
        await asyncio.sleep(0.01)


async def assert_polling_stopped(emulator, tasks: int) -> None:
    """Once `generate` has returned or raised, no task polls again. A poll each task sent just before it was
    cancelled may still reach the emulator after we count (at most one per task); a task still polling every
    20 ms would send dozens in the window below, however busy the machine is."""
    polls = len(emulator.calls("poll"))
    await asyncio.sleep(0.5)  # 25 poll intervals: bounds a negative, asserts no duration
    assert len(emulator.calls("poll")) <= polls + tasks


async def test_cancel_stops_every_task(bfl_emu, backends):
    bfl_emu.pending_polls = 10_000
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url, poll_interval_seconds=0.02))
    task = asyncio.create_task(backend.generate(request("flux-pro", n=3)))
    await wait_for_polls(bfl_emu, 6)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_polling_stopped(bfl_emu, tasks=3)  # nothing keeps polling after the client left


async def test_one_failed_task_cancels_its_siblings(bfl_emu, backends):
    bfl_emu.pending_polls = 10_000
    bfl_emu.script("submit", Fail(400))
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url, poll_interval_seconds=0.02))
    with pytest.raises(UpstreamError, match="HTTP 400"):
        await backend.generate(request("flux-pro", n=3))
    await assert_polling_stopped(bfl_emu, tasks=3)


async def test_concurrency_limit_is_shared_by_the_provider(bfl_emu, backends):
    bfl_emu.pending_polls = 3
    settings = make_settings("bfl", bfl_emu.base_url, max_concurrency=2, poll_interval_seconds=0.02)
    first = await backends("flux-pro", settings)
    second = await backends("flux-pro", settings)
    assert first._vendor is second._vendor  # one client and one limit per provider
    results = await asyncio.gather(
        first.generate(request("flux-pro", n=2)), second.generate(request("flux-pro", n=2))
    )
    assert sum(len(r.images) for r in results) == 4
    # With two slots, at most two tasks were ever between submission and Ready.
    order = [(c.route, c.path) for c in bfl_emu.requests if c.route in ("submit", "file")]
    active = peak = 0
    for route, _ in order:
        active += 1 if route == "submit" else -1
        peak = max(peak, active)
    assert peak <= 2


async def test_truncated_sample_is_a_bad_response_not_an_image(bfl_emu, backends):
    """The PNG header reads fine; the pixels do not. That is the vendor's fault: a 502, not a 500 later."""
    bfl_emu.script("file", Truncated())
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url))
    with pytest.raises(UpstreamError, match="malformed") as caught:
        await backend.generate(request("flux-pro"))
    assert status_of(caught.value) == 502 and caught.value.code == "upstream_bad_response"
    assert len(bfl_emu.calls("file")) == 1
    assert len((await backend.generate(request("flux-pro"))).images) == 1  # the next sample is whole


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_sample_link_does_not_blame_the_api_key(bfl_emu, backends, status):
    bfl_emu.script("file", Fail(status))
    backend = await backends("flux-pro", make_settings("bfl", bfl_emu.base_url))
    with pytest.raises(UpstreamError) as caught:
        await backend.generate(request("flux-pro"))
    message = caught.value.message
    assert status_of(caught.value) == 502 and caught.value.code == "upstream_bad_response"
    assert "image link from Black Forest Labs was refused" in message and f"HTTP {status}" in message
    assert "API key" not in message and "IMAGESERVE_BFL_API_KEY" not in message  # no key goes to that link
    assert len(bfl_emu.calls("file")) == 1  # not retried
    assert_no_secret(caught.value, KEY)


async def test_waiting_for_a_busy_provider_slot_is_bounded(bfl_emu, backends):
    bfl_emu.pending_polls = 10**9  # the first task holds the only slot until released below
    settings = make_settings(
        "bfl", bfl_emu.base_url, max_concurrency=1, queue_timeout_seconds=0.2, poll_interval_seconds=0.02
    )
    backend = await backends("flux-pro", settings)
    holder = asyncio.create_task(backend.generate(request("flux-pro")))
    try:
        await wait_for_polls(bfl_emu, 1)
        with pytest.raises(QueueFull) as caught:
            # The deadline only turns a regression (an endless wait) into a failure; it measures nothing.
            await asyncio.wait_for(backend.generate(request("flux-pro")), timeout=30)
        error = caught.value
        assert status_of(error) == 503 and error.type == "server_overloaded"
        assert "Black Forest Labs" in error.message and "0.2s" in error.message
        assert headers_of(error)["Retry-After"] == "7"  # FAST's rate_limit_retry_after_seconds
        assert len(bfl_emu.calls("submit")) == 1  # the refused request never reached the vendor
    finally:
        bfl_emu.pending_polls = 0
    assert len((await holder).images) == 1
    # The refused waiter left no slot behind: the one slot serves the next request.
    assert len((await backend.generate(request("flux-pro"))).images) == 1

"""`[content_policy]` through a real server and the official `openai` client: a terms file, and a moderation
service (tests/support/emulators/moderation.py) that flags, fails or hangs, failing closed or open.

Only local models are checked (a vendor model goes straight to its vendor: the OpenAI emulator), before any
work and before quota admission: a refusal reserves and bills nothing (`GET /v1/usage`), and the log says
which kind of rule refused, never the prompt. Every wait is bounded (client timeouts, the emulator's capped
hang, the policy's own `timeout_seconds`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from server.app import create_app
from server.settings import load_settings
from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.emulators.common import MAX_HANG_SECONDS, EmulatorServer, Fail, Hang
from tests.support.emulators.moderation import ModerationEmulator
from tests.support.emulators.openai_api import OpenAIEmulator
from tests.support.server_harness import RunningServer, running_server

MODERATION_KEY = "sk-moderation-test-4411"
OPENAI_KEY = "sk-openai-test-9d2e"
SIM = {"kind": "simulated", "time_scale": 0.002, "default_steps": 4, "custom_sizes": True, "price_usd": 0.003}
SECRET = "zanzibar-7f3"  # part of every refused prompt: it must reach no log and no answer
TERMS = "# what local models refuse\ndragon\nre:secret[- ]plans?\n"
CHEAP = {"size": "256x256", "response_format": "b64_json"}
POLICY_LOG = "server.content_policy"
# Room for a loaded machine's normal answers, yet shorter than the emulator's longest hang (MAX_HANG_SECONDS).
MODERATION_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def moderation() -> Iterator[ModerationEmulator]:
    with EmulatorServer(ModerationEmulator(MODERATION_KEY)) as running:
        assert isinstance(running, ModerationEmulator)
        yield running


@pytest.fixture(scope="module")
def vendor() -> Iterator[OpenAIEmulator]:
    with EmulatorServer(OpenAIEmulator(OPENAI_KEY)) as running:
        assert isinstance(running, OpenAIEmulator)
        yield running


@pytest.fixture(autouse=True)
def _fresh_emulators(moderation: ModerationEmulator, vendor: OpenAIEmulator) -> None:
    moderation.reset()
    vendor.reset()


def _server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path, vendor: OpenAIEmulator,
            policy: dict[str, Any]) -> Any:
    return running_server(
        data_dir=tmp_path_factory.mktemp("data"), model_cache=model_cache, api_keys=TEST_KEYS, default_model="sim",
        models={"sim": SIM}, content_policy=policy,
        providers={"openai": {"base_url": vendor.base_url + "/v1", "api_key": OPENAI_KEY, "max_retries": 0,
                              "timeout_seconds": 30}})


@pytest.fixture(scope="module")
def with_terms(tmp_path_factory, model_cache, vendor) -> Iterator[RunningServer]:
    terms = tmp_path_factory.mktemp("policy") / "terms.txt"
    terms.write_text(TERMS)
    with _server(tmp_path_factory, model_cache, vendor, {"terms_file": str(terms)}) as running:
        yield running


@pytest.fixture(scope="module")
def closed(tmp_path_factory, model_cache, vendor, moderation) -> Iterator[RunningServer]:
    policy = {"moderation_url": moderation.base_url + "/v1", "moderation_api_key": MODERATION_KEY,
              "moderation_model": "omni-moderation-latest", "timeout_seconds": MODERATION_TIMEOUT}
    with _server(tmp_path_factory, model_cache, vendor, policy) as running:
        yield running


@pytest.fixture(scope="module")
def fails_open(tmp_path_factory, model_cache, vendor, moderation) -> Iterator[RunningServer]:
    policy = {"moderation_url": moderation.base_url + "/v1", "moderation_api_key": MODERATION_KEY,
              "timeout_seconds": MODERATION_TIMEOUT, "fail_closed": False}
    with _server(tmp_path_factory, model_cache, vendor, policy) as running:
        yield running


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_url, api_key=TEST_KEY, max_retries=0, timeout=60)


def usage(server: RunningServer) -> dict[str, Any]:
    response = httpx.get(server.api_url + "/usage", headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=30)
    assert response.status_code == 200
    return response.json()


def refused(server: RunningServer, model: str, prompt: str, **extra: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as error:
        client(server).images.generate(model=model, prompt=prompt, **CHEAP, extra_body=extra or None)
    return error.value


def assert_policy_refusal(error: openai.BadRequestError) -> str:
    """The refusal in OpenAI's shape, echoing nothing of the prompt; its request id."""
    assert error.status_code == 400 and error.code == "content_policy_violation"
    assert error.type == "content_policy_violation" and error.param == "prompt"
    assert isinstance(error.body, dict) and error.body["code"] == "content_policy_violation"
    assert SECRET not in error.response.text
    return error.response.headers["x-request-id"]


def assert_logged_without_prompt(caplog: pytest.LogCaptureFixture, request_id: str, kind: str) -> None:
    messages = [record.getMessage() for record in caplog.records]
    assert any(request_id in message and f"{kind} rule" in message for message in messages), messages
    assert not any(SECRET in message for message in messages)


def test_a_term_refuses_a_local_model_and_nothing_is_billed(with_terms, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger=POLICY_LOG)
    before = usage(with_terms)
    request_id = assert_policy_refusal(refused(with_terms, "tiny-flux", f"a {SECRET} Dragon over the sea"))
    assert_logged_without_prompt(caplog, request_id, "term")
    after = usage(with_terms)
    assert after["total"] == before["total"]
    assert after["limits"]["used_last_minute"] == before["limits"]["used_last_minute"]  # nothing reserved
    assert "tiny-flux" not in {row["model"] for row in after["by_model"]}


def test_a_regex_and_the_negative_prompt_refuse_too(with_terms, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger=POLICY_LOG)
    request_id = assert_policy_refusal(refused(with_terms, "sim", f"{SECRET} the SECRET PLANS"))
    assert_logged_without_prompt(caplog, request_id, "regex")
    error = refused(with_terms, "tiny-sd3", f"a {SECRET} castle", negative_prompt="no dragon please")
    assert_logged_without_prompt(caplog, assert_policy_refusal(error), "term")


def test_a_clean_prompt_and_a_near_miss_go_through_and_are_billed(with_terms) -> None:
    before = usage(with_terms)["total"]
    for prompt in ("a lighthouse", "snapdragons in a vase"):  # whole words only: "snapdragons" is no "dragon"
        result = client(with_terms).images.generate(model="sim", prompt=prompt, **CHEAP)
        assert len(result.data) == 1
    after = usage(with_terms)["total"]
    assert after["requests"] == before["requests"] + 2 and after["images"] == before["images"] + 2


def test_a_vendor_model_is_not_checked(with_terms, vendor) -> None:
    result = client(with_terms).images.generate(model="dall-e-2", prompt="a dragon", size="256x256",
                                                response_format="b64_json")
    assert len(result.data) == 1
    assert [call.body["prompt"] for call in vendor.calls("generate")] == ["a dragon"]


def test_moderation_flags_refuse_with_the_key_and_format_of_openai(closed, moderation, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger=POLICY_LOG)
    before = usage(closed)["total"]
    error = refused(closed, "tiny-sd3", f"{SECRET} something forbidden", negative_prompt="blurry")
    assert_logged_without_prompt(caplog, assert_policy_refusal(error), "moderation")
    call = moderation.calls("moderate")[-1]
    assert call.headers["authorization"] == f"Bearer {MODERATION_KEY}"
    assert call.body == {"input": [f"{SECRET} something forbidden", "blurry"], "model": "omni-moderation-latest"}
    assert not any(MODERATION_KEY in record.getMessage() for record in caplog.records)
    result = client(closed).images.generate(model="sim", prompt="a lighthouse", **CHEAP)
    assert len(result.data) == 1
    assert usage(closed)["total"]["requests"] == before["requests"] + 1  # only the one that went through


def test_the_moderation_service_is_not_asked_about_vendor_models(closed, moderation, vendor) -> None:
    client(closed).images.generate(model="dall-e-2", prompt="a cat", size="256x256", response_format="b64_json")
    assert moderation.calls("moderate") == [] and len(vendor.calls("generate")) == 1


@pytest.mark.parametrize("behaviour", [Fail(500), Hang(MAX_HANG_SECONDS)], ids=["error", "hang"])
def test_fail_closed_refuses_with_a_503_and_retry_after(closed, moderation, behaviour, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger=POLICY_LOG)
    before = usage(closed)
    moderation.script("moderate", behaviour)
    with pytest.raises(openai.InternalServerError) as error:
        client(closed).images.generate(model="sim", prompt=f"a {SECRET} lighthouse", **CHEAP)
    assert error.value.status_code == 503 and error.value.code == "policy_unavailable"
    assert error.value.type == "policy_unavailable"
    assert int(error.value.response.headers["retry-after"]) >= 1
    after = usage(closed)
    assert after["total"] == before["total"]
    assert after["limits"]["used_last_minute"] == before["limits"]["used_last_minute"]  # nothing reserved
    assert any("fails closed" in record.getMessage() for record in caplog.records)
    assert not any(SECRET in record.getMessage() for record in caplog.records)
    # The next request, with the service back, is checked and served as usual.
    assert len(client(closed).images.generate(model="sim", prompt="a lighthouse", **CHEAP).data) == 1


@pytest.mark.parametrize("behaviour", [Fail(500), Hang(MAX_HANG_SECONDS)], ids=["error", "hang"])
def test_fail_open_lets_the_request_through_with_a_warning(fails_open, moderation, behaviour, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger=POLICY_LOG)
    moderation.script("moderate", behaviour)
    result = client(fails_open).images.generate(model="sim", prompt=f"a {SECRET} forbidden lighthouse", **CHEAP)
    assert len(result.data) == 1
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("fails open" in message and result.model_extra["perf"]["request_id"] in message
               for message in warnings), warnings
    assert not any(SECRET in message for message in warnings)
    # Once it answers again, its flags refuse again.
    assert_policy_refusal(refused(fails_open, "sim", f"{SECRET} something forbidden"))


def test_a_bad_terms_file_stops_the_server_from_starting(tmp_path: Path, model_cache: Path) -> None:
    terms = tmp_path / "terms.txt"
    terms.write_text("ok\n# fine\nre:(unclosed\n")
    settings = load_settings(data_dir=tmp_path / "data", model_cache=model_cache,
                             content_policy={"terms_file": str(terms)})
    with pytest.raises(ValueError, match=r"terms\.txt, line 3: invalid regular expression '\(unclosed'"):
        create_app(settings)

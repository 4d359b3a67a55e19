"""The content policy of local models (server.content_policy): the terms file, the moderation call, the logs,
and the service hook that runs it before quota admission. No server: the moderation service is an
`httpx.MockTransport` here (tests/integration/test_content_policy.py runs the real thing)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest

from pipelines.types import GenerationRequest
from server.accounts.credentials import ANONYMOUS, Principal
from server.api.errors import headers_of, status_of
from server.content_policy import ContentPolicy, Terms, load_terms, normalize, parse_terms
from server.errors import ContentPolicyViolation, PolicyUnavailable, RateLimitExceeded
from server.policy_settings import ContentPolicySettings
from server.registry import ModelRegistry
from server.service import ImageService

PROMPT_SECRET = "xyzzy-private-words"  # a part of every prompt that must never reach a log
TERMS = """\
# weapons
  # an indented comment
cat

Red  Apple
re:\\bsecret[- ]?plans?\\b
c++
"""


def terms(text: str = TERMS) -> Terms:
    return parse_terms(text, "terms.txt")


def request(prompt: str, negative: str | None = None) -> GenerationRequest:
    return GenerationRequest(request_id="req_test_1", model="tiny-flux", prompt=f"{PROMPT_SECRET} {prompt}",
                             n=1, width=256, height=256, negative_prompt=negative)


@pytest.mark.parametrize(("text", "kind", "line"), [
    ("a cat on a mat", "term", 3),
    ("A CAT", "term", 3),
    ("cat.", "term", 3),
    ("the cat's toy", "term", 3),
    ("a red apple", "term", 5),
    ("a RED \t apple pie", "term", 5),
    ("the Secret-Plans of mice", "regex", 6),
    ("learn C++ today", "term", 7),
])
def test_terms_and_regexes_match_case_insensitively(text: str, kind: str, line: int) -> None:
    rule = terms().match(text)
    assert rule is not None and (rule.kind, rule.line) == (kind, line)


@pytest.mark.parametrize("text", [
    "concatenate", "bobcats", "scatter", "catalogue", "redapple", "red apples", "a secretplanner", "c+",
    "weapons",  # only in a comment
    "an indented comment",
])
def test_plain_terms_match_whole_words_only_and_comments_are_ignored(text: str) -> None:
    assert terms().match(text) is None


def test_blank_and_comment_only_file_has_no_rules() -> None:
    parsed = terms("\n# nothing\n   \n\t# still nothing\n")
    assert parsed.rules == () and parsed.match("anything at all") is None


def test_compatibility_forms_and_invisible_characters_do_not_slip_past() -> None:
    assert terms().match(normalize("a ｃａｔ")) is not None  # full-width letters
    assert terms().match(normalize("a c\u200bat")) is not None  # a zero-width space inside the word


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("cat\nre:(unclosed\n", 2, "invalid regular expression '(unclosed'"),
    ("# ok\n\nre:[z-a]\n", 3, "invalid regular expression"),
    ("re:\n", 1, "must be followed by a regular expression"),
    ("dog\nre:a*\n", 2, "matches the empty text"),
])
def test_a_bad_line_is_an_error_naming_the_file_and_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_terms(text, "/etc/imageserve/terms.txt")
    message = str(error.value)
    assert f"/etc/imageserve/terms.txt, line {line}" in message and fragment in message
    assert "content_policy.terms_file" in message


def test_terms_file_is_read_and_a_missing_or_binary_one_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "terms.txt"
    path.write_text(TERMS, encoding="utf-8")
    assert len(load_terms(path).rules) == 4
    with pytest.raises(ValueError, match=r"cannot read .*missing\.txt"):
        load_terms(tmp_path / "missing.txt")
    (tmp_path / "binary.txt").write_bytes(b"cat\n\xff\xfe\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_terms(tmp_path / "binary.txt")
    policy = ContentPolicy(ContentPolicySettings(terms_file=path))
    assert policy.rule_count == 4


def _all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(("prompt", "negative", "kind"), [
    ("a cat", None, "term"),
    ("a dog", "no cats, no CAT", "term"),  # the negative prompt is checked too
    ("our secret plans", None, "regex"),
])
async def test_refusal_names_prompt_never_echoes_it_and_logs_only_the_rule(
    caplog: pytest.LogCaptureFixture, prompt: str, negative: str | None, kind: str
) -> None:
    caplog.set_level(logging.DEBUG)
    policy = ContentPolicy(ContentPolicySettings(), terms=terms())
    with pytest.raises(ContentPolicyViolation) as error:
        await policy.check(request(prompt, negative), "req_test_1")
    assert error.value.param == "prompt" and error.value.code == "content_policy_violation"
    assert PROMPT_SECRET not in error.value.message and prompt not in error.value.message
    assert status_of(error.value) == 400
    logged = _all_log_text(caplog)
    assert "req_test_1" in logged and f"{kind} rule" in logged and "terms.txt, line" in logged
    assert PROMPT_SECRET not in logged and prompt not in logged and (negative or PROMPT_SECRET) not in logged


async def test_a_clean_prompt_passes() -> None:
    await ContentPolicy(ContentPolicySettings(), terms=terms()).check(request("a dog", "blurry"), "req_test_1")


# --- the moderation service ----

def moderation(handler, **settings: object) -> ContentPolicy:
    config = ContentPolicySettings(moderation_url="http://moderation.test/v1", **settings)
    return ContentPolicy(config, transport=httpx.MockTransport(handler))


def flagging(seen: list[httpx.Request], word: str = "forbidden"):
    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        inputs = json.loads(req.content)["input"]
        return httpx.Response(200, json={"id": "modr-1", "model": "m", "results": [
            {"flagged": word in text, "categories": {"violence": word in text, "hate": False}} for text in inputs]})
    return handler


async def test_moderation_gets_openai_format_with_key_and_model_and_refuses_flagged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[httpx.Request] = []
    policy = moderation(flagging(seen), moderation_api_key="sk-mod-123", moderation_model="omni-moderation-latest")
    await policy.check(request("a harmless dog", "blurry"), "req_test_1")
    sent = seen[0]
    assert sent.method == "POST" and str(sent.url) == "http://moderation.test/v1/moderations"
    assert sent.headers["authorization"] == "Bearer sk-mod-123"
    assert json.loads(sent.content) == {"input": [f"{PROMPT_SECRET} a harmless dog", "blurry"],
                                        "model": "omni-moderation-latest"}
    with pytest.raises(ContentPolicyViolation) as error:
        await policy.check(request("a dog", "nothing forbidden"), "req_test_2")
    assert error.value.param == "prompt" and PROMPT_SECRET not in error.value.message
    assert json.loads(seen[1].content)["input"][1] == "nothing forbidden"
    logged = _all_log_text(caplog)
    assert "req_test_2" in logged and "moderation rule" in logged and "violence" in logged
    assert PROMPT_SECRET not in logged and "sk-mod-123" not in logged
    await policy.stop()


async def test_moderation_without_key_or_model_sends_neither() -> None:
    seen: list[httpx.Request] = []
    policy = moderation(flagging(seen))
    await policy.check(request("a dog"), "req_test_1")
    assert "authorization" not in seen[0].headers and "model" not in json.loads(seen[0].content)
    assert json.loads(seen[0].content)["input"] == [f"{PROMPT_SECRET} a dog"]  # no negative prompt: one input
    await policy.stop()


async def test_terms_refuse_before_the_moderation_service_is_asked() -> None:
    seen: list[httpx.Request] = []
    policy = ContentPolicy(ContentPolicySettings(moderation_url="http://moderation.test/v1"), terms=terms(),
                           transport=httpx.MockTransport(flagging(seen)))
    with pytest.raises(ContentPolicyViolation):
        await policy.check(request("a cat"), "req_test_1")
    assert seen == []
    await policy.stop()


def _status(code: int):
    return lambda req: httpx.Response(code, json={"error": {"message": "down"}})


def _refused(req: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=req)


async def _hangs(req: httpx.Request) -> httpx.Response:
    await asyncio.sleep(30)
    return httpx.Response(200, json={"results": [{"flagged": False}]})


def _not_json(req: httpx.Request) -> httpx.Response:
    return httpx.Response(200, text="<html>proxy</html>")


def _no_results(req: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"results": []})


UNAVAILABLE = [(_status(500), "HTTP 500"), (_status(401), "HTTP 401"), (_refused, "ConnectError"),
               (_hangs, "in time"), (_not_json, "not a moderation result"), (_no_results, "not a moderation result")]


@pytest.mark.parametrize(("handler", "reason"), UNAVAILABLE)
async def test_unavailable_moderation_fails_closed_with_a_503_and_retry_after(
    caplog: pytest.LogCaptureFixture, handler, reason: str
) -> None:
    caplog.set_level(logging.DEBUG)
    policy = moderation(handler, moderation_api_key="sk-mod-123", timeout_seconds=0.2)
    with pytest.raises(PolicyUnavailable) as error:
        await asyncio.wait_for(policy.check(request("a dog"), "req_test_1"), 10)
    assert status_of(error.value) == 503 and error.value.type == "policy_unavailable"
    assert headers_of(error.value)["Retry-After"] == str(error.value.retry_after)
    logged = _all_log_text(caplog)
    assert "req_test_1" in logged and reason in logged and "fails closed" in logged
    assert PROMPT_SECRET not in logged and "sk-mod-123" not in logged
    await policy.stop()


@pytest.mark.parametrize(("handler", "reason"), UNAVAILABLE)
async def test_unavailable_moderation_fails_open_with_a_warning(
    caplog: pytest.LogCaptureFixture, handler, reason: str
) -> None:
    caplog.set_level(logging.DEBUG)
    policy = moderation(handler, fail_closed=False, timeout_seconds=0.2)
    await asyncio.wait_for(policy.check(request("a dog"), "req_test_1"), 10)  # let through
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0].getMessage() and "fails open" in warnings[0].getMessage()
    assert PROMPT_SECRET not in _all_log_text(caplog)
    await policy.stop()


# --- the service hook ----

class RefuseAll:
    def __init__(self) -> None:
        self.checked: list[str] = []

    async def check(self, request: GenerationRequest, request_id: str) -> None:
        self.checked.append(request_id)
        raise ContentPolicyViolation(param="prompt")


class RecordingGate:
    """Admits nothing: a request that reaches admission is refused there, so no backend is needed."""

    def __init__(self) -> None:
        self.admitted: list[str] = []

    async def admit(self, principal: Principal, request: GenerationRequest) -> None:
        self.admitted.append(request.request_id)
        raise RateLimitExceeded("stop here", retry_after=1)

    async def settle(self, outcome, reserved: int) -> None:
        raise AssertionError("nothing was admitted")


async def test_service_checks_local_models_before_admission_and_leaves_vendor_models_alone() -> None:
    registry = ModelRegistry.from_overrides({})
    policy, gate, outcomes = RefuseAll(), RecordingGate(), []
    service = ImageService({}, store=None, usage=gate, on_outcome=outcomes.append, policy=policy)  # type: ignore[arg-type]
    local, vendor = registry.get("tiny-flux"), registry.get("dall-e-3")
    assert local is not None and local.is_local and vendor is not None and not vendor.is_local
    try:
        with pytest.raises(ContentPolicyViolation):
            await service.generate(request("a dog"), local, delivery=None, principal=ANONYMOUS)  # type: ignore[arg-type]
        assert policy.checked == ["req_test_1"] and gate.admitted == []  # refused before any reservation
        assert [(o.status, o.images, o.cost_usd) for o in outcomes] == [("content_policy_violation", 0, 0.0)]
        with pytest.raises(RateLimitExceeded):  # a vendor model goes straight to admission
            await service.generate(request("a dog"), vendor, delivery=None, principal=ANONYMOUS)  # type: ignore[arg-type]
        assert policy.checked == ["req_test_1"] and gate.admitted == ["req_test_1"]
    finally:
        service.close()

"""`[content_policy]`: what local models refuse to draw. Vendors apply their own policies; this is ours.

Two kinds of rule, either or both (`server.policy_settings.ContentPolicySettings`):

- a terms file: one rule a line; a plain term matches as a whole word (or words: any run of spaces between
  them), `re:<regex>` is a regular expression; both are case-insensitive. Blank lines and lines starting
  with `#` are ignored. Every line is checked when the file is loaded: a bad regex, or one that matches the
  empty text (it would refuse every prompt), is an error naming the file and the line.
- a moderation service speaking OpenAI's `POST {moderation_url}/moderations`: `flagged: true` in any of its
  results refuses. When it cannot be reached, times out or answers an error, `fail_closed` (the default)
  refuses with a 503 (`PolicyUnavailable`, with `Retry-After`); otherwise the request goes through with a
  warning in the log.

`ContentPolicy.check` runs on the prompt and the negative prompt before any work and before quota admission
(`server.service.ImageService.generate`, local models only), so a refusal reserves and bills nothing. A
refusal is a `ContentPolicyViolation` that does not echo the prompt, and the log says which kind of rule
refused (term, regex, moderation) and where, never the prompt itself. Terms and regexes see the text after
NFKC normalization with invisible format characters (zero-width spaces, ...) removed, so full-width letters
or a zero-width space inside a word do not slip past them; the moderation service gets the text as sent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx

from pipelines.types import GenerationRequest
from server.errors import ContentPolicyViolation, PolicyUnavailable
from server.policy_settings import ContentPolicySettings

logger = logging.getLogger(__name__)

REGEX_PREFIX = "re:"
FLAGS = re.IGNORECASE
MAX_LOGGED_CATEGORIES = 8


@dataclass(frozen=True)
class Rule:
    """One line of the terms file: its kind ("term" or "regex"), its line number and its pattern."""

    kind: str
    line: int
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class Terms:
    """The rules of a terms file. Plain terms are also merged into one pattern, so a long list costs one scan."""

    source: str
    rules: tuple[Rule, ...]
    any_term: re.Pattern[str] | None

    def match(self, text: str) -> Rule | None:
        """The first rule (in the file's order) that matches `text`, already normalized; None if none does. The
        plain terms are tried one by one only when their merged pattern has matched."""
        terms_match = self.any_term is not None and self.any_term.search(text) is not None
        return next((rule for rule in self.rules if (rule.kind == "regex" or terms_match)
                     and rule.pattern.search(text)), None)


def _term_pattern(term: str) -> str:
    """A whole-word, whitespace-tolerant pattern for a plain term ("red  apple" matches "Red apple")."""
    words = r"\s+".join(re.escape(word) for word in term.split())
    return rf"(?<!\w)(?:{words})(?!\w)"


def parse_terms(text: str, source: str) -> Terms:
    """The rules in `text` (a terms file's content; `source` names it in errors), or a ValueError naming the
    line of the first bad one."""
    rules: list[Rule] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = normalize(raw.strip())
        if not line or line.startswith("#"):
            continue
        where = f"{source}, line {number}"
        if line.startswith(REGEX_PREFIX):
            expression = line[len(REGEX_PREFIX):].strip()
            if not expression:
                raise ValueError(f"content_policy.terms_file {where}: 're:' must be followed by a regular expression")
            try:
                pattern = re.compile(expression, FLAGS)
            except re.error as exc:
                raise ValueError(f"content_policy.terms_file {where}: invalid regular expression "
                                 f"{expression!r}: {exc}") from None
            if pattern.search("") is not None:
                raise ValueError(f"content_policy.terms_file {where}: the regular expression {expression!r} matches "
                                 f"the empty text, so it would refuse every prompt")
            rules.append(Rule("regex", number, pattern))
        else:
            rules.append(Rule("term", number, re.compile(_term_pattern(line), FLAGS)))
    plain = [rule.pattern.pattern for rule in rules if rule.kind == "term"]
    any_term = re.compile("|".join(plain), FLAGS) if plain else None
    return Terms(source, tuple(rules), any_term)


def load_terms(path: Path) -> Terms:
    """Read and check a terms file (UTF-8); a ValueError naming it if it cannot be read or has a bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"content_policy.terms_file: cannot read {path}: {reason}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"content_policy.terms_file: {path} is not UTF-8 text (byte {exc.start})") from None
    return parse_terms(text, str(path))


def normalize(text: str) -> str:
    """NFKC (full-width and other compatibility forms become plain letters), without format characters."""
    return "".join(char for char in unicodedata.normalize("NFKC", text) if unicodedata.category(char) != "Cf")


class ContentPolicy:
    """The `[content_policy]` of the settings, applied to a request's prompt and negative prompt.

    A lifecycle component (`start`/`stop`): it owns the HTTP client of the moderation service, if any."""

    def __init__(self, settings: ContentPolicySettings, *, terms: Terms | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        """`terms`: already loaded (else read from `settings.terms_file`, if set). `transport`: for tests."""
        self.settings = settings
        if terms is None and settings.terms_file is not None:
            terms = load_terms(settings.terms_file)
        self.terms = terms
        self._http: httpx.AsyncClient | None = None
        if settings.moderation_url is not None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(settings.timeout_seconds), transport=transport,
                                           follow_redirects=False)

    @property
    def rule_count(self) -> int:
        return len(self.terms.rules) if self.terms is not None else 0

    async def start(self) -> None:
        parts = [f"{self.rule_count} rule(s) from {self.terms.source}"] if self.terms is not None else []
        if self._http is not None:
            parts.append(f"the moderation service (fails {'closed' if self.settings.fail_closed else 'open'})")
        logger.info("content policy for local models: %s", " and ".join(parts))

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def check(self, request: GenerationRequest, request_id: str) -> None:
        """Return if the request may go on; raise `ContentPolicyViolation` (400) to refuse it, or
        `PolicyUnavailable` (503) when the moderation service is down and the policy fails closed."""
        texts = [request.prompt] + ([request.negative_prompt] if request.negative_prompt else [])
        if self.terms is not None:
            for text in texts:
                rule = self.terms.match(normalize(text))
                if rule is not None:
                    self._refuse(request_id, rule.kind, f"{self.terms.source}, line {rule.line}")
        if self._http is not None:
            await self._moderate(texts, request_id)

    @staticmethod
    def _refuse(request_id: str, kind: str, where: str) -> NoReturn:
        # Never the prompt, nor the part of it that matched: the log says which rule, the operator has the file.
        logger.info("%s: refused by the content policy (%s rule: %s)", request_id, kind, where)
        raise ContentPolicyViolation(param="prompt")

    async def _moderate(self, texts: list[str], request_id: str) -> None:
        results = await self._ask_moderation(texts, request_id)
        if results is None:
            if self.settings.fail_closed:
                raise PolicyUnavailable()
            return
        flagged = [result for result in results if result.get("flagged") is True]
        if flagged:
            categories = sorted({str(name) for result in flagged if isinstance(result.get("categories"), dict)
                                 for name, hit in result["categories"].items() if hit is True})
            self._refuse(request_id, "moderation", ", ".join(categories[:MAX_LOGGED_CATEGORIES]) or "flagged")

    async def _ask_moderation(self, texts: list[str], request_id: str) -> list[dict[str, Any]] | None:
        """The service's `results`, or None (logged) when it is unavailable or its answer is unusable."""
        settings = self.settings
        assert self._http is not None and settings.moderation_url is not None
        payload: dict[str, Any] = {"input": texts}
        if settings.moderation_model:
            payload["model"] = settings.moderation_model
        headers = {}
        if settings.moderation_api_key is not None:
            headers["Authorization"] = f"Bearer {settings.moderation_api_key.get_secret_value()}"
        try:
            async with asyncio.timeout(settings.timeout_seconds):  # the whole call, not each read
                response = await self._http.post(f"{settings.moderation_url}/moderations", json=payload,
                                                  headers=headers)
        except (httpx.HTTPError, TimeoutError) as exc:
            # The class only: an exception's text may hold the URL, and nothing about the request belongs here.
            timed_out = isinstance(exc, (TimeoutError, httpx.TimeoutException))
            self._unavailable(request_id, "it did not answer in time" if timed_out
                              else f"it could not be reached ({type(exc).__name__})")
            return None
        if not response.is_success:
            self._unavailable(request_id, f"it answered HTTP {response.status_code}")
            return None
        try:
            results = response.json()["results"]
        except (ValueError, KeyError, TypeError):
            results = None
        if not isinstance(results, list) or not results or not all(isinstance(r, dict) for r in results):
            self._unavailable(request_id, "its answer is not a moderation result")
            return None
        return results

    def _unavailable(self, request_id: str, reason: str) -> None:
        if self.settings.fail_closed:
            logger.warning("%s: refused: the moderation service is unavailable (%s) and the content policy "
                           "fails closed", request_id, reason)
        else:
            logger.warning("%s: let through unchecked by the moderation service: it is unavailable (%s) and the "
                           "content policy fails open (fail_closed = false)", request_id, reason)

"""`[content_policy]`: what local models refuse to draw (off by default). See `server.content_policy`."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from server.url_checks import check_http_url


class ContentPolicySettings(BaseModel):
    """A terms/regex list and/or a moderation service speaking OpenAI's `/v1/moderations`, applied to the prompt
    and negative prompt of requests for local models before any work. Both off by default."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, allow_inf_nan=False)

    terms_file: Path | None = None  # one term or `re:<regex>` per line; `#` comments
    moderation_url: str | None = None  # base URL of an OpenAI-compatible API, e.g. https://api.openai.com/v1
    moderation_api_key: SecretStr | None = None
    moderation_model: str | None = None  # e.g. omni-moderation-latest; the service's default when unset
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # When the moderation service cannot be reached: refuse the request (503) rather than let it through.
    fail_closed: bool = True

    @field_validator("moderation_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value, "content_policy.moderation_url")

    @property
    def enabled(self) -> bool:
        return self.terms_file is not None or self.moderation_url is not None

"""Settings, read in one place: embedded defaults < TOML file (`--config`) < `IMAGESERVE_*` env.

Nothing reads the environment at import time: `load_settings()` is called by the CLI or the tests
and the result is passed down.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pipelines.optimizations.plan import OptimizationOptions
from server.policy_settings import ContentPolicySettings
from server.ray_settings import RayModelSettings, RaySettings
from server.storage_settings import StorageSettings
from server.url_checks import check_http_url

Dtype = Literal["bf16", "fp16", "fp32"]
# server.backends.factory.BACKEND_FACTORIES has one entry per kind.
ModelKind = Literal["sd3", "flux", "tiny-sd3", "tiny-flux", "simulated", "openai", "bfl", "ideogram", "google"]
# A device a local model runs on: "cpu", "cuda", "cuda:N", or a simulated card's free label.
DeviceLabel = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
# Every settings model: errors name the field but never echo the value (it may be a key or a password),
# and no float setting may be inf or NaN.
STRICT = ConfigDict(extra="forbid", hide_input_in_errors=True, allow_inf_nan=False)
# Dot-separated labels; `_` is allowed as container runtimes use it in service names.
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")


# Per-model speed and memory options: defined once, in pipelines.optimizations (OptimizationOptions).
OPTIMIZATION_FIELDS = frozenset(OptimizationOptions.model_fields)


class ModelSettings(OptimizationOptions):
    """A `[models.<id>]` table: registry overrides, how a local model is loaded and batched, and its speed
    options (the fields of `OptimizationOptions`, inherited)."""

    model_config = STRICT

    # Registry fields (see server.registry.ModelSpec).
    kind: ModelKind | None = None
    source: str | None = None
    price_usd: float | None = Field(default=None, ge=0)
    price_hd_usd: float | None = Field(default=None, ge=0)
    sizes: list[str] | None = None
    custom_sizes: bool | None = None
    max_images: int | None = Field(default=None, ge=1, le=10)
    default_steps: int | None = Field(default=None, ge=1, le=100)
    default_guidance: float | None = Field(default=None, ge=0, le=30)
    description: str | None = None
    extra_params: list[str] | None = None  # e.g. ["seed", "num_inference_steps"] for a model added here
    # Serving fields.
    # One copy of the model per device, fed from one queue: "all" (every CUDA device), or labels such as
    # ["cuda:0", "cuda:1"] (free labels such as ["sim0", "sim1"] for kind = "simulated"). Default: one device.
    devices: Literal["all"] | list[DeviceLabel] | None = None
    max_batch_images: int = Field(default=4, ge=1, le=64)
    # Streamed previews: an AutoencoderTiny (hub repo in the model cache, or a folder); default by family:
    # madebyollin/taef1 (FLUX), madebyollin/taesd3 (SD3); "" for the model's own VAE.
    preview_vae: str | None = None
    ray: RayModelSettings | None = None  # replicas on a Ray cluster (`serve --ray`); see server.ray_settings
    dtype: Dtype | None = None  # on CUDA; CPU always runs fp32
    # kind = "simulated" (see pipelines.simulated): a batch waits steps * (base + per_mp * total MP) * time_scale.
    step_seconds_base: float | None = Field(default=None, ge=0)
    step_seconds_per_megapixel: float | None = Field(default=None, ge=0)
    time_scale: float = Field(default=1.0, gt=0, le=1000)
    @field_validator("sizes")
    @classmethod
    def _check_sizes(cls, value: list[str] | None) -> list[str] | None:
        from pipelines.optimizations import parse_size

        for size in value or ():
            parse_size(size)
        return value

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("devices must name at least one device (or be left out)")
            if len(set(value)) != len(value):
                raise ValueError("devices must not name a device twice")
        return value

    @model_validator(mode="after")
    def _fp8_needs_compile(self) -> ModelSettings:
        if self.quantize == "fp8" and self.compile == "off":
            raise ValueError("quantize = 'fp8' needs compile = 'regional' or 'full': torchao's fp8 matmuls are "
                             "only fast once compiled (eager fp8 is slower than bf16)")
        return self

    def registry_fields(self) -> dict[str, Any]:
        serving = {"devices", "ray", "preview_vae", "max_batch_images", "dtype", "step_seconds_base",
                   "step_seconds_per_megapixel", "time_scale"}
        serving |= OPTIMIZATION_FIELDS
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if k not in serving}


# ----------------------------------------------------------------------------------------------------
# Vendor providers: `[providers.<p>]` in the TOML file, `IMAGESERVE_<P>_<FIELD>` in the environment.
# ----------------------------------------------------------------------------------------------------


class ProviderSettings(BaseModel):
    """How to reach one vendor API. Every field can be set as `IMAGESERVE_<P>_<FIELD>`."""

    model_config = STRICT

    api_key: SecretStr | None = None
    base_url: str
    timeout_seconds: float = Field(default=60.0, gt=0)  # per HTTP request to the vendor
    max_retries: int = Field(default=2, ge=0, le=10)  # extra attempts after 5xx, connection errors, timeouts
    retry_backoff_seconds: float = Field(default=0.5, ge=0)  # first wait; doubles on each further retry
    retry_backoff_max_seconds: float = Field(default=8.0, ge=0)
    rate_limit_retry_after_seconds: float = Field(default=20.0, gt=0)  # when a vendor 429 has no Retry-After
    max_concurrency: int = Field(default=64, ge=1, le=1024)  # upstream calls in flight, over all its models
    queue_timeout_seconds: float = Field(default=60.0, gt=0)  # longest wait for one of those slots, then 503
    max_connections: int = Field(default=64, ge=1)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        return check_http_url(value, "base_url")

    def has_key(self) -> bool:
        return self.api_key is not None and bool(self.api_key.get_secret_value().strip())


class OpenAIProviderSettings(ProviderSettings):
    base_url: str = "https://api.openai.com/v1"
    # Our model id -> upstream model, e.g. {"dall-e-3" = "gpt-image-2"}; ids not listed go upstream unchanged.
    models: dict[str, str] = Field(default_factory=dict)
    # What we ask DALL-E models for; GPT image models always answer base64.
    response_format: Literal["b64_json", "url"] = "b64_json"


class BFLProviderSettings(ProviderSettings):
    base_url: str = "https://api.bfl.ai"
    endpoint: str = "flux-pro-1.1"  # POST {base_url}/v1/{endpoint}
    poll_interval_seconds: float = Field(default=0.5, gt=0)
    max_poll_seconds: float = Field(default=300.0, gt=0)  # give up on a task that is not Ready by then
    safety_tolerance: int | None = Field(default=None, ge=0, le=6)  # vendor default when unset
    output_format: Literal["png", "jpeg"] = "png"
    max_concurrency: int = Field(default=24, ge=1, le=1024)  # BFL's default limit of active tasks


class IdeogramProviderSettings(ProviderSettings):
    base_url: str = "https://api.ideogram.ai"
    model: str = "V_2"
    magic_prompt_option: Literal["AUTO", "ON", "OFF"] = "AUTO"


class GoogleProviderSettings(ProviderSettings):
    base_url: str = "https://generativelanguage.googleapis.com"
    # `imagen-*` models are called with `:predict`; `gemini-*` image models with `:generateContent`.
    model: str = "imagen-3.0-generate-002"
    person_generation: Literal["dont_allow", "allow_adult", "allow_all"] | None = None


class ProvidersSettings(BaseModel):
    model_config = STRICT

    openai: OpenAIProviderSettings = Field(default_factory=OpenAIProviderSettings)
    bfl: BFLProviderSettings = Field(default_factory=BFLProviderSettings)
    ideogram: IdeogramProviderSettings = Field(default_factory=IdeogramProviderSettings)
    google: GoogleProviderSettings = Field(default_factory=GoogleProviderSettings)

    def get(self, provider: str) -> ProviderSettings:
        settings = getattr(self, provider, None)
        if not isinstance(settings, ProviderSettings):
            raise KeyError(f"unknown provider '{provider}'")
        return settings


def provider_env_name(provider: str, field: str) -> str:
    """The environment variable for one provider field, e.g. `IMAGESERVE_BFL_API_KEY`."""
    return f"IMAGESERVE_{provider.upper()}_{field.upper()}"


class ProviderEnvSource(PydanticBaseSettingsSource):
    """Reads `IMAGESERVE_<P>_<FIELD>` into `providers.<p>.<field>`.

    The flat names are what operators expect (`IMAGESERVE_BFL_API_KEY`); the nested form
    `IMAGESERVE_PROVIDERS__BFL__API_KEY` also works through the normal env source. Dict fields take JSON.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        env = {k.upper(): v for k, v in os.environ.items()}
        found: dict[str, dict[str, Any]] = {}
        for provider, provider_field in ProvidersSettings.model_fields.items():
            model_cls = provider_field.annotation
            assert isinstance(model_cls, type) and issubclass(model_cls, ProviderSettings)
            for name, info in model_cls.model_fields.items():
                raw = env.get(provider_env_name(provider, name))
                if raw is None:
                    continue
                value: Any = raw
                if info.annotation is not None and getattr(info.annotation, "__origin__", None) is dict:
                    try:
                        value = json.loads(raw)
                    except ValueError as exc:
                        env_name = provider_env_name(provider, name)
                        raise ValueError(f"{env_name} must be a JSON object") from exc
                found.setdefault(provider, {})[name] = value
        return {"providers": found} if found else {}


class TierSettings(BaseModel):
    """A `[tiers.<name>]` table: images per key in a sliding minute and day. 0 means no limit."""

    model_config = STRICT

    images_per_minute: int = Field(default=0, ge=0)
    images_per_day: int = Field(default=0, ge=0)


# The spec's tiers; `[tiers.<name>]` tables are merged over these field by field.
DEFAULT_TIERS: dict[str, dict[str, int]] = {
    "free": {"images_per_minute": 5, "images_per_day": 50},
    "pro": {"images_per_minute": 30, "images_per_day": 1000},
    "enterprise": {"images_per_minute": 0, "images_per_day": 0},
}


class Settings(StorageSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGESERVE_", env_nested_delimiter="__", **STRICT)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: SecretStr = SecretStr("")  # "key:tier,key2" (bare key = tier pro)
    data_dir: Path = Path("data")
    model_cache: Path = Path("model_cache")
    public_url: str | None = None
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Dtype = "bf16"
    default_model: str = "dall-e-3"
    url_ttl_seconds: int = Field(default=3600, ge=1)
    url_signing_key: SecretStr | None = None  # default: a random key kept in the data dir
    batch_wait_ms: float = Field(default=5.0, ge=0, le=10_000)
    max_queue_images: int = Field(default=64, ge=10)  # at least the largest n (10), or such a request never fits
    preload: Annotated[list[str], NoDecode] = Field(default_factory=list)  # models loaded at start
    cleanup_interval_seconds: float = Field(default=60.0, gt=0)
    log_level: LogLevel = "info"
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    providers: ProvidersSettings = Field(default_factory=ProvidersSettings)
    ray: RaySettings = Field(default_factory=RaySettings)  # `serve --ray` only
    # Keys, quotas and the usage ledger (server.accounts.database): SQLite in data_dir unless a URL is given.
    database_url: SecretStr | None = None  # e.g. postgresql://user:pw@host:5432/imageserve
    tiers: dict[str, TierSettings] = Field(
        default_factory=lambda: {name: TierSettings(**limits) for name, limits in DEFAULT_TIERS.items()})
    auth_failures_per_minute: int = Field(default=20, ge=0)  # per client IP, then 429; 0 = no limit
    # HMAC key for the fingerprints of IMAGESERVE_API_KEYS keys (server.accounts.credentials); default: a random
    # one kept in data_dir. Replicas sharing a database must share it.
    key_pepper: SecretStr | None = None
    # A quota reservation still pending after this long lost its server (crash) and is given back.
    # Keep it above the longest a request can take (model load + queue + generation + vendor retries).
    stale_reservation_seconds: float = Field(default=900.0, ge=60)
    # Request bodies: JSON bodies above this are refused with 413 while being read; each uploaded image (edits,
    # variations) likewise; decoded images above this many pixels are refused (decompression bombs).
    max_json_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=65_536)
    variation_strength: float = Field(default=0.7, gt=0, le=1)  # how far a local model's variation departs
    content_policy: ContentPolicySettings = Field(default_factory=ContentPolicySettings)
    # Ledger rows older than this many days are folded into per-day totals and removed (None: keep all).
    usage_retention_days: int | None = Field(default=None, ge=1, le=36500)

    @field_validator("tiers", mode="before")
    @classmethod
    def _merge_tiers(cls, value: Any) -> Any:
        """Merge `[tiers.<name>]` over the defaults, so setting one field keeps the others."""
        if not isinstance(value, dict):
            return value
        merged: dict[str, dict[str, Any]] = {name: dict(limits) for name, limits in DEFAULT_TIERS.items()}
        for name, limits in value.items():
            fields = limits.model_dump(exclude_unset=True) if isinstance(limits, TierSettings) else limits
            if not isinstance(fields, dict):
                return value  # let pydantic report the bad type
            merged.setdefault(str(name).lower(), {}).update(fields)
        return merged

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOSTNAME.fullmatch(value):
                raise ValueError("host must be an IP address or a host name, e.g. 127.0.0.1 or 0.0.0.0") from None
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value, "public_url")

    @field_validator("preload", mode="before")
    @classmethod
    def _split_preload(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            ProviderEnvSource(settings_cls),
        ]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)

    @property
    def base_url(self) -> str:
        """The absolute base for image URLs."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def listens_on_loopback_only(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def model_settings(self, model_id: str) -> ModelSettings:
        return self.models.get(model_id) or ModelSettings()


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings from an optional TOML file, the environment and explicit overrides."""
    if config_file is None:
        return Settings(**overrides)
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path, title="Settings")

    try:
        return _FileSettings(**overrides)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from None

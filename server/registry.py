"""The model registry, as data: every model the server knows, local or hosted.

The table starts from the spec (sizes, max images, prices) plus the two tiny random-weight demo
models. A `ModelSpec` says what a model accepts; `server.api.protocol` checks requests against it and
the backends are built from its `kind`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from server.settings import Settings

CUSTOM_SIZE_MIN = 256
CUSTOM_SIZE_MAX = 2048
CUSTOM_SIZE_MULTIPLE = 16

LOCAL_PARAMS = frozenset({"seed", "num_inference_steps", "guidance_scale"})


@dataclass(frozen=True)
class ModelSpec:
    id: str
    provider: str  # "local" for diffusers models, else the vendor: openai, bfl, ideogram, google
    kind: str  # backend kind: sd3, flux, tiny-sd3, tiny-flux, simulated, openai, bfl, ideogram, google
    sizes: tuple[str, ...]  # fixed sizes; plus any valid custom size when `custom_sizes`
    max_images: int
    price_usd: float  # per image, standard quality
    price_hd_usd: float | None = None  # per image at quality "hd", where the model has it
    price_by_size: dict[str, float] = field(default_factory=dict)  # size -> per-image price
    custom_sizes: bool = False
    styles: tuple[str, ...] = ()
    qualities: tuple[str, ...] = ("standard",)
    extra_params: frozenset[str] = frozenset()  # optional extensions it takes beyond the OpenAI core
    default_size: str = "1024x1024"
    source: str | None = None  # local models: hub repo id or folder in diffusers layout
    description: str = ""
    # Local models: defaults for the diffusion call.
    default_steps: int | None = None
    default_guidance: float | None = None
    max_sequence_length: int | None = None
    # Local models: whether a mask may be given to /v1/images/edits (tiny-sd3's 4-channel test VAE cannot:
    # diffusers' SD3 inpainting pipeline takes 16 or 33 latent channels, as the real SD3 has).
    inpainting: bool = True
    # Hosted models: whether edits and variations are forwarded, and whether an edit needs a mask (local models
    # take both, with or without a mask).
    edits: bool = False
    variations: bool = False
    edit_needs_mask: bool = False

    @property
    def is_local(self) -> bool:
        return self.provider == "local"

    def accepts_size(self, width: int, height: int) -> bool:
        if f"{width}x{height}" in self.sizes:
            return True
        return self.custom_sizes and all(
            CUSTOM_SIZE_MIN <= side <= CUSTOM_SIZE_MAX and side % CUSTOM_SIZE_MULTIPLE == 0
            for side in (width, height)
        )

    def price_per_image(self, size: str, quality: str) -> float:
        if quality == "hd" and self.price_hd_usd is not None:
            return self.price_hd_usd
        return self.price_by_size.get(size, self.price_usd)

    def cost(self, n: int, size: str, quality: str) -> float:
        return round(self.price_per_image(size, quality) * n, 6)


_TINY_NOTE = "random weights, for trying the API and for tests: it makes noise, not pictures"

DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="dall-e-3",
        provider="openai",
        kind="openai",
        sizes=("1024x1024", "1792x1024", "1024x1792"),
        max_images=1,
        price_usd=0.040,
        price_hd_usd=0.080,
        styles=("vivid", "natural"),
        qualities=("standard", "hd"),
        description="OpenAI DALL-E 3, forwarded to OpenAI",
    ),
    ModelSpec(
        id="dall-e-2",
        provider="openai",
        kind="openai",
        sizes=("256x256", "512x512", "1024x1024"),
        max_images=10,
        price_usd=0.020,
        price_by_size={"256x256": 0.016, "512x512": 0.018, "1024x1024": 0.020},
        edits=True,
        variations=True,
        description="OpenAI DALL-E 2, forwarded to OpenAI",
    ),
    ModelSpec(
        id="stable-diffusion-3",
        provider="local",
        kind="sd3",
        sizes=("1024x1024",),
        custom_sizes=True,
        max_images=4,
        price_usd=0.035,
        extra_params=LOCAL_PARAMS | {"negative_prompt"},
        source="stabilityai/stable-diffusion-3-medium-diffusers",
        default_steps=28,
        default_guidance=7.0,
        max_sequence_length=256,
        description="Stable Diffusion 3 Medium, run locally with diffusers",
    ),
    ModelSpec(
        id="flux-pro",
        provider="bfl",
        kind="bfl",
        sizes=("1024x1024",),
        custom_sizes=True,
        max_images=4,
        price_usd=0.055,
        extra_params=frozenset({"seed"}),
        edits=True,
        description="FLUX1.1 [pro], forwarded to Black Forest Labs",
    ),
    ModelSpec(
        id="flux-dev",
        provider="local",
        kind="flux",
        sizes=("1024x1024",),
        custom_sizes=True,
        max_images=4,
        price_usd=0.025,
        extra_params=LOCAL_PARAMS,
        source="black-forest-labs/FLUX.1-dev",
        default_steps=28,
        default_guidance=3.5,
        max_sequence_length=512,
        description="FLUX.1 [dev], run locally with diffusers",
    ),
    ModelSpec(
        id="ideogram-2",
        provider="ideogram",
        kind="ideogram",
        sizes=("1024x1024",),
        custom_sizes=True,
        max_images=4,
        price_usd=0.040,
        extra_params=frozenset({"seed", "negative_prompt"}),
        edits=True,
        edit_needs_mask=True,
        description="Ideogram 2.0, forwarded to Ideogram",
    ),
    ModelSpec(
        id="imagen-3",
        provider="google",
        kind="google",
        sizes=("1024x1024",),
        max_images=4,
        price_usd=0.040,
        extra_params=frozenset({"negative_prompt"}),
        description="Imagen 3, forwarded to Google's Generative Language API",
    ),
    ModelSpec(
        id="tiny-sd3",
        provider="local",
        kind="tiny-sd3",
        sizes=("1024x1024",),
        custom_sizes=True,
        max_images=4,
        price_usd=0.0,
        extra_params=LOCAL_PARAMS | {"negative_prompt"},
        default_steps=4,
        default_guidance=7.0,
        max_sequence_length=256,
        inpainting=False,
        description=f"StableDiffusion3Pipeline with {_TINY_NOTE}",
    ),
    ModelSpec(
        id="tiny-flux",
        provider="local",
        kind="tiny-flux",
        sizes=("1024x1024",),
        custom_sizes=True,
        max_images=4,
        price_usd=0.0,
        extra_params=LOCAL_PARAMS,
        default_steps=4,
        default_guidance=3.5,
        max_sequence_length=512,
        description=f"FluxPipeline with {_TINY_NOTE}",
    ),
)


class ModelRegistry:
    """The models in force: the defaults above, with per-model overrides from the settings."""

    def __init__(self, models: list[ModelSpec] | tuple[ModelSpec, ...]) -> None:
        self._models = {m.id: m for m in models}

    @classmethod
    def from_overrides(cls, overrides: dict[str, dict[str, object]]) -> ModelRegistry:
        """Apply `[models.<id>]` tables: known ids are updated, new ids (e.g. simulated) are added."""
        models = {m.id: m for m in DEFAULT_MODELS}
        for model_id, values in overrides.items():
            fields = {k: v for k, v in values.items() if k in ModelSpec.__dataclass_fields__}
            for key in ("sizes", "styles", "qualities"):
                if key in fields:
                    fields[key] = tuple(fields[key])  # type: ignore[arg-type]
            if "extra_params" in fields:
                fields["extra_params"] = frozenset(fields["extra_params"])  # type: ignore[arg-type]
            if model_id in models:
                models[model_id] = replace(models[model_id], **fields)  # type: ignore[arg-type]
            else:
                if "kind" not in fields:
                    raise ValueError(f"[models.{model_id}] is not a built-in model, so it needs `kind` (sd3, flux, "
                                     "simulated, ...: see docs/configuration.md) and, for sd3 or flux, a `source`")
                fields.setdefault("provider", "local")
                twin = next((m for m in DEFAULT_MODELS if m.kind == fields["kind"] and m.is_local), None)
                if twin is not None:  # e.g. fine-tuned FLUX weights: what the built-in FLUX takes, by default
                    fields = {**{name: getattr(twin, name) for name in _TWIN_FIELDS}, **fields}
                fields.setdefault("sizes", ("1024x1024",))
                fields.setdefault("max_images", 4)
                fields.setdefault("price_usd", 0.0)
                models[model_id] = ModelSpec(id=model_id, **fields)  # type: ignore[arg-type]
        return cls(list(models.values()))

    def get(self, model_id: str) -> ModelSpec | None:
        return self._models.get(model_id)

    def __iter__(self):
        return iter(self._models.values())

    def ids(self) -> list[str]:
        return list(self._models)


# What a model added in the settings with a local kind (`kind = "flux"`, a folder of fine-tuned weights) takes
# from the built-in model of that kind unless its table says otherwise.
_TWIN_FIELDS = ("sizes", "custom_sizes", "extra_params", "default_steps", "default_guidance", "max_sequence_length",
                "inpainting", "max_images")


def build_registry(settings: Settings) -> ModelRegistry:
    """The registry in force for these settings: the defaults with the `[models.<id>]` tables applied."""
    return ModelRegistry.from_overrides({mid: ms.registry_fields() for mid, ms in settings.models.items()})

"""Internal types shared by every backend: what a generation asks for and what it gives back.

Wire types (pydantic) stay at the HTTP edge in `server.api.protocol`; inside the server only these small
frozen dataclasses travel. Local diffusers models and vendor adapters implement one `ImageBackend`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


# Seeds are 0 .. 2**32 - 1; `n` images get `seed, seed + 1, ...` modulo 2**32.
SEED_MAX = 2**32 - 1
SEED_MODULUS = SEED_MAX + 1

_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


def split_size(text: str) -> tuple[int, int] | None:
    """`"1024x768"` -> (1024, 768); None unless the whole text is WIDTHxHEIGHT (no sign, space or newline).
    The one size parser: the API, the settings and the optimizations all go through it."""
    match = _SIZE.fullmatch(text)
    return (int(match[1]), int(match[2])) if match else None


PreviewCallback = Callable[[int, int, "NDArray[np.uint8]"], None]


@dataclass(frozen=True, eq=False)
class ImageEdit:
    """What an edit or a variation starts from: the input image, already at the request's size, and where to
    repaint. No mask: image-to-image over the whole picture (an edit without a mask, or a variation)."""

    image: NDArray[np.uint8]  # (height, width, 3)
    mask: NDArray[np.bool_] | None = None  # (height, width), True where the model repaints
    strength: float = 0.7  # 0: keep the input, 1: ignore it
    variation: bool = False  # a variation (no prompt) rather than an edit
    references: tuple[NDArray[np.uint8], ...] = ()  # further input images, at their own sizes (GPT image models)

    @property
    def mode(self) -> str:
        return "inpaint" if self.mask is not None else "img2img"


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request, normalised: size already split, defaults filled in."""

    request_id: str
    model: str
    prompt: str
    n: int
    width: int
    height: int
    quality: str = "standard"
    style: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    user: str | None = None
    edit: ImageEdit | None = field(default=None, compare=False)  # edits and variations; None: text-to-image
    # Streaming: previews per image (0-3), handed to `on_preview(image index, preview index, pixels)` from the
    # device's thread as they are decoded; the final images come back as usual.
    partial_images: int = 0
    on_preview: PreviewCallback | None = field(default=None, compare=False)

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class GeneratedImage:
    """One image: uint8 pixels of shape (height, width, 3) (local models) or encoded bytes (vendors), never
    both."""

    pixels: NDArray[np.uint8] | None = None
    data: bytes | None = None
    mime_type: str | None = None
    seed: int | None = None
    revised_prompt: str | None = None


@dataclass(frozen=True)
class GenerationResult:
    images: list[GeneratedImage]
    width: int
    height: int
    quality: str = "standard"
    batch_size: int | None = None  # local models: images in the largest batch that made these
    device_ms: float | None = None  # local models: pipeline time spent on these images' batches
    queue_ms: float | None = None  # local models: time these images waited in the scheduler, not on the device
    upstream_ms: float | None = None  # vendors: wall time of the call to the vendor (download and checks included)
    device: str | None = None  # local models: the device (or devices, comma-separated) that ran these images
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Readiness:
    ready: bool
    detail: str = ""


class LocalModelSpec(Protocol):
    """What the engine needs to know of a local model's catalogue entry (`server.registry.ModelSpec` has it)."""

    @property
    def id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def source(self) -> str | None: ...

    @property
    def default_steps(self) -> int | None: ...

    @property
    def default_guidance(self) -> float | None: ...

    @property
    def max_sequence_length(self) -> int | None: ...

    @property
    def extra_params(self) -> frozenset[str]: ...

    def accepts_size(self, width: int, height: int) -> bool: ...


@dataclass(frozen=True)
class BackendStats:
    """What a backend reports for metrics at scrape time."""

    queued_images: int = 0  # images waiting for the device (not counting the batch running now)
    dropped_jobs: int = 0  # queued images dropped because their client went away before they ran


BatchObserver = Callable[[str, int, float], None]  # (device label, images in the batch, device seconds), e.g. metrics


class ImageBackend(Protocol):
    """Every capability a model's backend has, local pipeline or vendor adapter: nobody probes for more.

    Observers (`BatchObserver`) are given to a backend when it is built, never attached afterwards.
    `VendorBackend` and `UnavailableBackend` answer the hooks they have no use for with the defaults
    below (no preload, empty stats, a description without a device).
    """

    async def start(self) -> None:
        """Work the backend does once the event loop runs (cheap; weights load in `preload` or on first use)."""
        ...

    async def preload(self) -> None:
        """Make the model ready now (load weights, warm up); a no-op where there is nothing to load."""
        ...

    async def close(self) -> None: ...

    def readiness(self) -> Readiness: ...

    def describe(self) -> dict[str, Any]:
        """What `GET /v1/models` adds to the model card (device, dtype, optimizations); never raises."""
        ...

    def stats(self) -> BackendStats: ...

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Make `request.n` images or raise an `pipelines.errors.ImageServeError`."""
        ...

"""Internal types shared by every backend: what a generation asks for and what it gives back.

Wire types (pydantic) stay at the HTTP edge in `server.api.protocol`; inside the server only these small
frozen dataclasses travel. Local diffusers models and vendor adapters implement one `ImageBackend`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


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
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Readiness:
    ready: bool
    detail: str = ""


class ImageBackend(Protocol):
    """What the service needs of any model: local pipeline or vendor adapter."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def readiness(self) -> Readiness: ...

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Make `request.n` images or raise `server.errors.ImageServeError`."""
        ...

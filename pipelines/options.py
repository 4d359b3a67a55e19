"""The engine's per-model options, as the engine needs them: read from the settings once, at the edge.

`server.backends.factory.local_model_options` builds a `LocalModelOptions` from the settings; nothing in
`pipelines/` reads settings (or imports `server/`). `OptimizationOptions` (speed and memory options) is in
`pipelines.optimizations.plan`; `DeviceProfile` is the simulated device's timing model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.optimizations.plan import OptimizationOptions


@dataclass(frozen=True)
class DeviceProfile:
    """How long a batch takes on the simulated device; `time_scale` < 1 runs faster than real time."""

    step_seconds_base: float
    step_seconds_per_megapixel: float
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.step_seconds_base < 0 or self.step_seconds_per_megapixel < 0:
            raise ValueError("step seconds must not be negative")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be greater than 0")

    def batch_seconds(self, steps: int, width: int, height: int, images: int) -> float:
        """Device time of one batch of `images` images of `width`x`height`, already scaled."""
        megapixels = images * width * height / 1e6
        return steps * (self.step_seconds_base + self.step_seconds_per_megapixel * megapixels) * self.time_scale

    def images_per_second(self, steps: int, width: int, height: int, images: int) -> float:
        """The ideal throughput: a device that is never idle, running batches of `images`."""
        return images / self.batch_seconds(steps, width, height, images)


# FLUX.1-dev, bf16, diffusers eager, one H100; derivation in `pipelines.simulated`.
FLUX_DEV_H100 = DeviceProfile(step_seconds_base=0.0286, step_seconds_per_megapixel=0.1975)


@dataclass(frozen=True)
class LocalModelOptions:
    """How one local model (diffusers or simulated) is placed, batched and optimized."""

    model_cache: Path
    device: str = "auto"  # "auto", "cuda" or "cpu" (IMAGESERVE_DEVICE)
    # The devices the model runs on, one copy each: () = the one `device` chooses; "all" = every CUDA device;
    # or labels: "cuda:0", "cuda:1", "cpu" (diffusers), free labels such as "sim0" (simulated cards).
    devices: tuple[str, ...] | str = ()
    dtype: str = "bf16"  # on CUDA; the CPU always runs fp32
    max_batch_images: int = 4
    # Streamed previews: a tiny autoencoder (diffusers' AutoencoderTiny: a hub repo in the model cache, or a
    # folder) decodes them when it is there; else the model's own VAE does.
    preview_vae: str | None = None
    batch_wait_s: float = 0.005  # longest wait to fill a batch on an idle device
    max_queue_images: int = 64
    optimizations: OptimizationOptions = field(default_factory=OptimizationOptions)
    profile: DeviceProfile | None = None  # simulated devices only; None: FLUX.1-dev on an H100

"""A simulated device: the local-model backend with a runner that waits instead of computing.

`kind = "simulated"` models go through exactly the same `pipelines.backend.LocalBackend` (scheduler,
`BatchKey` grouping, per-image seeds, `batch_size`/`device_ms`); only the device differs
(`SimulatedDevice`). The runner's worker thread makes real pixels of the requested size (a per-seed
gradient with 4 bits of noise, so a 1024x1024 PNG is ~1.9 MB and costs what a real one costs to encode)
and then sleeps out the rest of the batch's device time, which releases the GIL as a GPU kernel wait would:

    device seconds = steps * (step_seconds_base + step_seconds_per_megapixel * total megapixels) * time_scale

This measures the scheduler and the CPU side (encoding, base64, HTTP) at realistic loads on any machine.

Each simulated card has a label (`devices = ["sim0", "sim1"]` runs the model on two cards, one runner each;
by default a model has a card of its own, `sim-<model id>`). Models given the same label share that card and
take turns per batch, as models on one GPU do (`pipelines.device.device_lock`).

The FLUX.1-dev on one H100 profile (`FLUX_DEV_H100`, also shipped as
`benchmarks/profiles/flux-dev-sim-h100.toml`) comes from the published numbers: diffusers bf16 eager
takes ~6.6 s for one 1024x1024 image (1.048576 MP) at 28 steps, and batching adds only 5-15% throughput
at that size. One step of a batch of one is 6.6 / 28 = 0.2357 s = base + per_mp * 1.048576. Taking a
10% gain at batch 4 (the middle of the range): 4 * 0.2357 / (base + 4 * per_mp * 1.048576) = 1.10, so
per_mp * 1.048576 = 0.2357 * (4 / 1.10 - 1) / 3 = 0.2071 s and base = 0.0286 s; per_mp = 0.1975 s/MP.
The profile then gives +6.5% at batch 2, +10% at batch 4 and at most +14% (1 + base / (per_mp * MP))
for any batch: the whole published range. The 6.6 s includes text encoding and VAE decoding, which
the profile folds into its steps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pipelines.device import device_lock
from pipelines.options import FLUX_DEV_H100, DeviceProfile, LocalModelOptions
from pipelines.runner import DeviceRunner
from pipelines.scheduler import BatchKey, ImageJobSpec, TimedOutputs
from pipelines.types import LocalModelSpec, Readiness

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

logger = logging.getLogger(__name__)


def synthesize_pixels(width: int, height: int, seed: int) -> NDArray[np.uint8]:
    """Deterministic (height, width, 3) uint8 pixels for `seed`: a colour gradient plus 4 bits of noise (as a
    PNG, ~60% of raw), the form every local runner returns (`pipelines.pixels`)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    start = rng.integers(0, 128, 3)
    span = rng.integers(-64, 64, 3)
    across = (start[None, :] + np.outer(np.linspace(0, 0.5, width), span)).astype(np.int16)  # (w, 3)
    down = np.outer(np.linspace(0, 0.5, height), span).astype(np.int16)  # (h, 3)
    pixels = (across[None, :, :] + down[:, None, :]).clip(0, 239).astype(np.uint8)
    pixels += np.frombuffer(rng.bytes(width * height * 3), np.uint8).reshape(height, width, 3) & 15
    return pixels


def edited_pixels(source: NDArray[np.uint8], made: NDArray[np.uint8], mask: NDArray[np.bool_] | None,
                  strength: float) -> NDArray[np.uint8]:
    """A simulated edit: `source` blended towards `made` by `strength`, only where `mask` is set (if given)."""
    import numpy as np

    blended = (source.astype(np.float32) * (1 - strength) + made.astype(np.float32) * strength).round()
    out = blended.clip(0, 255).astype(np.uint8)
    return np.where(mask[:, :, None], out, source) if mask is not None else out


class SimulatedRunner:
    """Owns the simulated device: one worker thread, like `DiffusersRunner`, so batches never overlap.

    `sleep` and `clock` are injectable so tests check the device-time formula without a wall clock.
    """

    def __init__(
        self,
        name: str,
        profile: DeviceProfile,
        *,
        label: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.profile = profile
        self.label = label or f"sim-{name}"
        self._lock = device_lock(f"simulated:{self.label}")  # models sharing a card take turns
        self._sleep = sleep
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"simulated-{name}-{self.label}")

    optimizations = None  # nothing to optimize on a simulated device

    @property
    def loaded(self) -> bool:
        return True

    async def load(self) -> None:
        return None

    async def run_batch(self, key: BatchKey, specs: Sequence[ImageJobSpec]) -> TimedOutputs:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run_on_card, key, list(specs))

    def _run_on_card(self, key: BatchKey, specs: list[ImageJobSpec]) -> TimedOutputs:
        """Timed from when this model has the card, as `DiffusersRunner` times a GPU."""
        with self._lock:
            started = time.perf_counter()
            images = self.run_sync(key, specs)
            return TimedOutputs(images, time.perf_counter() - started)

    def run_sync(self, key: BatchKey, specs: list[ImageJobSpec]) -> list[NDArray[np.uint8]]:
        """Make the images, then wait out the rest of the batch's device time (making them is part of it)."""
        started = self._clock()
        device_s = self.profile.batch_seconds(key.steps, key.width, key.height, len(specs))
        images = [synthesize_pixels(key.width, key.height, spec.seed) for spec in specs]
        for spec, image in zip(specs, images, strict=True):  # streaming: coarse previews of what is coming
            for index in range(spec.previews):
                spec.on_preview(index, image[:: 2 ** (spec.previews - index), :: 2 ** (spec.previews - index)]
                                .repeat(2 ** (spec.previews - index), 0).repeat(2 ** (spec.previews - index), 1))
        if key.mode != "generate":  # an edit: the input, moved towards the new pixels by `strength`
            images = [edited_pixels(spec.image, image, spec.mask, key.strength) for spec, image in zip(specs, images,
                                                                                                      strict=True)]
        remaining = device_s - (self._clock() - started)
        if remaining > 0:
            self._sleep(remaining)
        return images

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class SimulatedDevice:
    """The `ModelDevice` of a simulated card: no weights, a `SimulatedRunner` with the model's profile."""

    def __init__(self, spec: LocalModelSpec, options: LocalModelOptions) -> None:
        self.spec = spec
        self._options = options
        self.profile = options.profile or FLUX_DEV_H100

    def labels(self) -> tuple[str, ...]:
        configured = self._options.devices
        if configured == "all":
            raise ValueError("devices = 'all' means every CUDA device; simulated cards need labels, "
                             "e.g. devices = ['sim0', 'sim1']")
        return tuple(configured) or (f"sim-{self.spec.id}",)

    def create_runner(self, label: str) -> SimulatedRunner:
        return SimulatedRunner(self.spec.id, self.profile, label=label)

    def readiness(self, runner: DeviceRunner | None, load_error: str | None) -> Readiness:
        try:
            self.labels()
        except ValueError as exc:
            return Readiness(False, f"cannot run here: {exc}")
        if load_error:
            return Readiness(False, f"failed to load: {load_error}")
        p = self.profile
        return Readiness(True, f"simulated device: {p.step_seconds_base:g} s + {p.step_seconds_per_megapixel:g} s/MP "
                               f"per step, time scale {p.time_scale:g}")

    def describe(self, runner: DeviceRunner | None) -> dict[str, Any]:
        return {"device": "simulated", "dtype": "bf16", "max_batch_images": self._options.max_batch_images,
                "step_seconds_base": self.profile.step_seconds_base,
                "step_seconds_per_megapixel": self.profile.step_seconds_per_megapixel,
                "time_scale": self.profile.time_scale}

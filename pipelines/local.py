"""The diffusers device: where a local SD3 or FLUX model (or a tiny twin) runs, and what it says about it.

`DiffusersDevice` is the `ModelDevice` of `pipelines.backend.LocalBackend` for real pipelines: it finds the
weights (never downloading), chooses the placement (device and dtype), refuses a full-size model on a CPU
nobody asked for, describes the optimizations (planned before the load, applied after), and creates the
`DiffusersRunner` that loads the pipeline on its worker thread, one per device when the model runs on several
(`devices = ["cuda:0", "cuda:1"]` or `"all"`).
"""

from __future__ import annotations

from typing import Any

from pipelines.device import Placement, choose_placement, cpu_refusal, cuda_device_count
from pipelines.errors import ModelUnavailable
from pipelines.loading import WeightsLocation, locate_weights
from pipelines.optimizations import plan_optimizations
from pipelines.options import LocalModelOptions
from pipelines.runner import DeviceRunner, DiffusersRunner
from pipelines.tiny import TINY_KINDS
from pipelines.types import LocalModelSpec, Readiness


class DiffusersDevice:
    def __init__(self, spec: LocalModelSpec, options: LocalModelOptions) -> None:
        self.spec = spec
        self._options = options
        self._configured_options = options.optimizations
        self._placements: dict[str, Placement] = {}
        self._labels: tuple[str, ...] | None = None
        self._optimizations_preview: dict[str, Any] | None = None

    def _location(self) -> WeightsLocation:
        return locate_weights(self.spec.kind, self.spec.source, self._options.model_cache)

    def labels(self) -> tuple[str, ...]:
        """`devices`, with "all" as every CUDA device; by default the one device `device` chooses. Worked out
        once: asking torch about CUDA is not free, and the answer does not change."""
        if self._labels is None:
            configured = self._options.devices
            if configured == "all":
                count = cuda_device_count()
                if not count:
                    raise ValueError("devices = 'all' takes every CUDA device, and torch sees none")
                labels: tuple[str, ...] = tuple(f"cuda:{index}" for index in range(count))
            elif configured:
                labels = tuple(configured)
                for label in labels:
                    if label not in ("cpu", "cuda") and not label.startswith("cuda:"):
                        raise ValueError(f"device '{label}' is not 'cpu', 'cuda' or 'cuda:N'")
                    self._placement_for(label)
            else:  # the one device IMAGESERVE_DEVICE chooses (its placement remembers `auto`)
                placement = choose_placement(self._options.device, self._options.dtype)
                self._placements[placement.device] = placement
                labels = (placement.device,)
            self._labels = labels
        return self._labels

    def _placement_for(self, setting: str) -> Placement:
        if setting not in self._placements:
            self._placements[setting] = choose_placement(setting, self._options.dtype)
        return self._placements[setting]

    def placement(self, label: str | None = None) -> Placement:
        """The placement of device `label` (default: the model's first device)."""
        return self._placement_for(label if label is not None else self.labels()[0])

    def readiness(self, runner: DeviceRunner | None, load_error: str | None) -> Readiness:
        location = self._location()
        if not location.found:
            return Readiness(False, f"{location.detail}; run `imageserve pull {self.spec.id}`")
        try:
            refusal = cpu_refusal(self.placement(), self.spec.id, full_size=self.spec.kind not in TINY_KINDS)
        except ValueError as exc:  # a device setting this machine cannot honour
            return Readiness(False, f"cannot run here: {exc}")
        if refusal:
            return Readiness(False, refusal)
        if load_error:
            return Readiness(False, f"failed to load: {load_error}")
        state = "loaded" if runner is not None and runner.loaded else "loads on first request"
        return Readiness(True, f"{location.detail}; {state}")

    def create_runner(self, label: str) -> DeviceRunner:
        location = self._location()
        if not location.found:
            raise ModelUnavailable(
                f"Model '{self.spec.id}' has no weights here ({location.detail}). "
                f"Fetch them with `imageserve pull {self.spec.id}`, or set `source` under "
                f"[models.{self.spec.id}] to a diffusers folder."
            )
        placement = self.placement(label)
        refusal = cpu_refusal(placement, self.spec.id, full_size=self.spec.kind not in TINY_KINDS)
        if refusal:  # a full-size model on a CPU nobody asked for: minutes per image
            raise ModelUnavailable(refusal)
        return DiffusersRunner(self.spec, location, self._options, placement)

    def describe(self, runner: DeviceRunner | None) -> dict[str, Any]:
        """Device, dtype and optimizations, for `/v1/models` and `imageserve models`. Never raises.

        `optimizations` has one shape: what is configured, what applied, what was switched off and why,
        and the warm-up done; before the model loads, `applied` and `warmup` are empty and `state` says so.
        """
        try:
            placement = self.placement()
        except ValueError as exc:
            return {"device": "unavailable", "dtype": None, "device_error": str(exc),
                    "max_batch_images": self._options.max_batch_images}
        applied = runner.optimizations if runner is not None else None
        if applied is not None:
            optimizations = {"configured": self._configured_options.summary(), "state": "loaded",
                             **applied.as_dict()}
        else:  # not loaded yet: what this machine will switch off (worked out once)
            if self._optimizations_preview is None:
                self._optimizations_preview = {
                    "configured": self._configured_options.summary(), "state": "applied when the model loads",
                    "applied": {}, "warmup": [],
                    "switched_off": plan_optimizations(self._configured_options, placement).switched_off,
                }
            optimizations = self._optimizations_preview
        return {"device": ",".join(self.labels()), "dtype": placement.dtype,
                "device_warning": placement.warning or None,
                "max_batch_images": self._options.max_batch_images, "optimizations": optimizations}

"""Out of device memory: recognising it, freeing the cache after it, and simulating it for tests.

The scheduler retries a batch that raised `DeviceOutOfMemory` in halves, then answers 503
`insufficient_resources` for a single image that still does not fit; the runner turns what torch and the CUDA
libraries raise into that exception with `is_out_of_memory`.
"""

from __future__ import annotations

import gc
from typing import Any

OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it (`raise ... from`, or raised while handling), outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def is_out_of_memory(exc: BaseException) -> bool:
    """`torch.OutOfMemoryError`, or one of the RuntimeErrors CUDA libraries raise when an allocation fails,
    also when wrapped by another error (torch.compile wraps what happens while it compiles)."""
    import torch

    return any(isinstance(error, torch.OutOfMemoryError)
               or (isinstance(error, RuntimeError) and any(marker in str(error) for marker in OOM_MARKERS))
               for error in exception_chain(exc))


def free_device_memory(device: str) -> None:
    """Call after the exception (and the tensors its traceback holds) is gone."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        with torch.cuda.device(device):
            torch.cuda.empty_cache()


def simulated_oom_callback(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
    """A `callback_on_step_end` that fails like a full GPU, for `debug_oom_above_images`."""
    import torch

    raise torch.OutOfMemoryError("simulated: CUDA out of memory (debug_oom_above_images)")

"""Warm-up: run each configured size at batch 1 and at the largest batch when the model loads."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pipelines.memory import free_device_memory, is_out_of_memory
from pipelines.optimizations.apply import AppliedOptimizations
from pipelines.optimizations.plan import OptimizationOptions

logger = logging.getLogger(__name__)


def warm_up(run: Callable[[int, int, int], object], options: OptimizationOptions, max_batch_images: int,
            result: AppliedOptimizations, device: str) -> None:
    """Run every warm-up size at batch 1 and at the largest batch, so no request pays a compile.

    Two batch sizes per size: compiled graphs take any size (dynamic shapes, see `compiler.py`), but torch
    specialises a batch of one, so batch 1 and a batch of several are two graphs; after both, no accepted
    size or batch size compiles again. A warm-up batch that does not fit is skipped (the scheduler splits
    such batches when they come).
    """
    for width, height in options.warmup_sizes:
        for batch in sorted({1, max_batch_images}):
            started = time.perf_counter()
            oom = None
            try:
                run(width, height, batch)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                oom = f"{type(exc).__name__}"
            seconds = time.perf_counter() - started
            if oom:
                free_device_memory(device)
                result.warmup.append(f"{width}x{height} x{batch}: out of memory, skipped")
                logger.warning("warm-up %dx%d x%d ran out of device memory; skipped", width, height, batch)
            else:
                result.warmup.append(f"{width}x{height} x{batch}: {seconds:.1f} s")
                logger.info("warm-up %dx%d x%d took %.1f s", width, height, batch, seconds)

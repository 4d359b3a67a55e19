"""Queue time: how long a job waited in the scheduler before its batch ran, and a request's share of it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from pipelines.backend import queue_ms
from pipelines.scheduler import BatchKey, BatchScheduler, ImageJobSpec, JobResult, TimedOutputs

KEY = BatchKey("m", 256, 256, 4, 3.5, 512)
OTHER = BatchKey("m", 512, 256, 4, 3.5, 512)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ClockedRunner:
    """Each batch takes `seconds` of the fake clock on the device, and says so (TimedOutputs)."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds

    async def run_batch(self, key: BatchKey, specs: Sequence[ImageJobSpec]) -> TimedOutputs:
        self.clock.now += self.seconds
        return TimedOutputs([spec.prompt for spec in specs], self.seconds)


async def test_a_job_behind_another_batch_waited_for_it_and_the_first_did_not_wait() -> None:
    clock = Clock()
    scheduler = BatchScheduler(ClockedRunner(clock, 1.0), max_batch_images=4, max_wait_s=0.0, max_queue_images=8,
                               clock=clock)
    scheduler.start()
    first, second = await asyncio.gather(scheduler.generate(KEY, [ImageJobSpec("a", 1)]),
                                         scheduler.generate(OTHER, [ImageJobSpec("b", 2)]))
    await scheduler.close()
    assert first[0].queued_ms == 0.0 and first[0].device_ms == 1000.0
    assert second[0].queued_ms == pytest.approx(1000.0)  # the whole of the first batch


def _result(batch_id: int, queued_ms: float, device_ms: float) -> JobResult:
    return JobResult(None, 1, device_ms, batch_id, queued_ms)


def test_one_batch_queue_is_its_wait() -> None:
    results = [_result(1, 30.0, 500.0), _result(1, 30.0, 500.0)]
    assert queue_ms(results, 500.0) == 30.0


def test_a_request_over_two_batches_does_not_count_its_own_device_time_as_queue() -> None:
    # Batch 1 ran at once; batch 2 (its other images) started when batch 1 ended.
    results = [_result(1, 0.0, 1000.0), _result(2, 1000.0, 1000.0)]
    assert queue_ms(results, 2000.0) == 0.0


def test_another_requests_batch_in_between_counts_as_queue() -> None:
    # Batch 1 (ours), batch 2 (someone else's, 1 s), batch 3 (ours).
    results = [_result(1, 0.0, 1000.0), _result(3, 2000.0, 1000.0)]
    assert queue_ms(results, 2000.0) == 1000.0

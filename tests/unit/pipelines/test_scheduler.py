"""The batching scheduler alone, against a fake runner: no torch, milliseconds per test."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from pipelines.errors import GenerationFailed, OutOfDeviceMemory, QueueFull
from pipelines.scheduler import BatchKey, BatchScheduler, DeviceOutOfMemory, ImageJobSpec, TimedOutputs
from server.api.errors import status_of

KEY = BatchKey("m", 256, 256, 4, 3.5, 512)
OTHER_SIZE = BatchKey("m", 512, 256, 4, 3.5, 512)
OTHER_STEPS = BatchKey("m", 256, 256, 8, 3.5, 512)


class FakeRunner:
    """Records every batch; can be held on a gate, fail, run out of memory above a size, or report its own
    device time per image (`device_s_per_image`, as TimedOutputs)."""

    def __init__(self, *, fail: bool = False, oom_above: int | None = None, wrong_count: bool = False,
                 device_s_per_image: float | None = None):
        self.batches: list[tuple[BatchKey, list[ImageJobSpec]]] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.fail = fail
        self.oom_above = oom_above
        self.wrong_count = wrong_count
        self.device_s_per_image = device_s_per_image

    async def run_batch(self, key: BatchKey, specs: Sequence[ImageJobSpec]) -> list[str] | TimedOutputs:
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.oom_above is not None and len(specs) > self.oom_above:
            raise DeviceOutOfMemory("fake OOM")
        self.batches.append((key, list(specs)))
        if self.fail:
            raise RuntimeError("boom")
        outputs = [f"{spec.prompt}@{spec.seed}" for spec in specs]
        outputs = outputs[:-1] if self.wrong_count else outputs
        if self.device_s_per_image is not None:
            return TimedOutputs(outputs, self.device_s_per_image * len(specs))
        return outputs


def specs(*prompts: str) -> list[ImageJobSpec]:
    return [ImageJobSpec(prompt, seed) for seed, prompt in enumerate(prompts)]


def make(runner: FakeRunner, **kw) -> BatchScheduler:
    kw.setdefault("max_batch_images", 4)
    kw.setdefault("max_wait_s", 0.2)
    kw.setdefault("max_queue_images", 16)
    return BatchScheduler(runner, **kw)


async def test_same_key_requests_share_one_batch_and_outputs_map_back() -> None:
    runner = FakeRunner()
    scheduler = make(runner, max_wait_s=5.0)
    results = await asyncio.gather(
        scheduler.generate(KEY, specs("a", "b")), scheduler.generate(KEY, specs("c", "d"))
    )
    assert [[r.output for r in result] for result in results] == [["a@0", "b@1"], ["c@0", "d@1"]]
    assert len(runner.batches) == 1 and all(r.batch_size == 4 for result in results for r in result)
    await scheduler.close()


async def test_different_keys_never_share_a_batch() -> None:
    runner = FakeRunner()
    scheduler = make(runner, max_wait_s=0.05)
    await asyncio.gather(*(scheduler.generate(key, specs("x")) for key in (KEY, OTHER_SIZE, OTHER_STEPS, KEY)))
    keys_per_batch = [{key} for key, _ in runner.batches]
    assert all(len(keys) == 1 for keys in keys_per_batch)
    assert sorted(len(batch) for _, batch in runner.batches) == [1, 1, 2]
    await scheduler.close()


async def test_batches_are_capped_at_max_batch_images() -> None:
    runner = FakeRunner()
    scheduler = make(runner, max_batch_images=4, max_wait_s=5.0)
    await scheduler.generate(KEY, specs(*"abcdef"))
    assert [len(batch) for _, batch in runner.batches] == [4, 2]
    await scheduler.close()


async def test_zero_wait_dispatches_alone_and_long_wait_merges_late_arrivals() -> None:
    runner = FakeRunner()
    scheduler = make(runner, max_wait_s=0.0)
    first = asyncio.create_task(scheduler.generate(KEY, specs("a")))
    await runner.started.wait()
    await first
    await scheduler.generate(KEY, specs("b"))
    assert [len(batch) for _, batch in runner.batches] == [1, 1]
    await scheduler.close()

    runner = FakeRunner()
    scheduler = make(runner, max_wait_s=30.0, max_batch_images=2)
    await scheduler.generate(KEY, specs("warm"))  # the previous arrival: requests are now coming in
    first = asyncio.create_task(scheduler.generate(KEY, specs("a")))
    await asyncio.sleep(0.05)  # under load, the scheduler waits for a partner
    assert len(runner.batches) == 1
    await scheduler.generate(KEY, specs("b"))  # fills the batch: both go at once, long before 30 s
    await first
    assert [len(batch) for _, batch in runner.batches] == [1, 2]
    await scheduler.close()


async def test_a_lone_request_on_an_idle_device_does_not_sit_out_the_batch_wait() -> None:
    """Nothing has arrived for longer than the wait: nothing suggests a partner, so the batch starts at once.
    With a 30 s wait, finishing inside the 5 s bound proves it did not wait (a bound, not a timing)."""
    clock = FakeClock()
    runner = FakeRunner()
    scheduler = make(runner, max_wait_s=30.0, clock=clock)
    await asyncio.wait_for(scheduler.generate(KEY, specs("first")), timeout=5)  # the first request ever
    clock.now += 31.0  # quiet for longer than the wait
    await asyncio.wait_for(scheduler.generate(KEY, specs("alone")), timeout=5)
    assert [len(batch) for _, batch in runner.batches] == [1, 1]
    await scheduler.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_jobs_queued_while_busy_start_without_waiting_again() -> None:
    runner = FakeRunner()
    runner.gate = asyncio.Event()
    scheduler = make(runner, max_wait_s=30.0, max_batch_images=2)
    busy = [asyncio.create_task(scheduler.generate(KEY, specs("a", "b")))]
    await runner.started.wait()
    queued = asyncio.create_task(scheduler.generate(KEY, specs("c")))
    await asyncio.sleep(0.01)
    runner.gate.set()
    # The queued job's wait began when it arrived; it does not wait another 30 s once the device frees.
    await asyncio.wait_for(queued, timeout=5)
    await asyncio.gather(*busy)
    await scheduler.close()


async def test_a_failed_batch_fails_every_job_and_the_scheduler_keeps_serving() -> None:
    runner = FakeRunner(fail=True)
    scheduler = make(runner, max_wait_s=0.5, max_batch_images=3)
    outcomes = await asyncio.gather(
        scheduler.generate(KEY, specs("a")), scheduler.generate(KEY, specs("b", "c")), return_exceptions=True
    )
    assert all(isinstance(outcome, GenerationFailed) for outcome in outcomes)
    runner.fail = False
    assert [r.output for r in await scheduler.generate(KEY, specs("d"))] == ["d@0"]
    await scheduler.close()


async def test_wrong_output_count_is_an_error_not_a_mismatch() -> None:
    scheduler = make(FakeRunner(wrong_count=True), max_wait_s=0.0)
    with pytest.raises(GenerationFailed):
        await scheduler.generate(KEY, specs("a", "b"))
    await scheduler.close()


async def test_full_queue_refuses_whole_requests_with_503() -> None:
    runner = FakeRunner()
    runner.gate = asyncio.Event()
    scheduler = make(runner, max_wait_s=0.0, max_batch_images=1, max_queue_images=2)
    running = asyncio.create_task(scheduler.generate(KEY, specs("a")))
    await runner.started.wait()  # "a" left the queue and is on the device
    queued = asyncio.create_task(scheduler.generate(KEY, specs("b")))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as refused:
        await scheduler.generate(KEY, specs("c", "d"))  # would make 3 queued: refused whole
    assert refused.value.retry_after >= 1  # the HTTP edge turns it into 503 with Retry-After
    assert scheduler.queued_images == 1
    runner.gate.set()
    await asyncio.gather(running, queued)
    await scheduler.close()


async def test_jobs_of_a_client_that_went_away_are_dropped_before_running() -> None:
    runner = FakeRunner()
    runner.gate = asyncio.Event()
    scheduler = make(runner, max_wait_s=0.0, max_batch_images=1)
    running = asyncio.create_task(scheduler.generate(KEY, specs("a")))
    await runner.started.wait()
    abandoned = asyncio.create_task(scheduler.generate(KEY, specs("gone", "gone too")))
    await asyncio.sleep(0)
    abandoned.cancel()  # what the HTTP layer does when the client disconnects
    kept = asyncio.create_task(scheduler.generate(KEY, specs("kept")))
    await asyncio.sleep(0)
    runner.gate.set()
    await asyncio.gather(running, kept)
    prompts = [spec.prompt for _, batch in runner.batches for spec in batch]
    assert prompts == ["a", "kept"]
    assert scheduler.stats.dropped_jobs == 2
    await scheduler.close()


async def test_out_of_memory_splits_the_batch_then_gives_a_single_image_503() -> None:
    runner = FakeRunner(oom_above=1)
    scheduler = make(runner, max_wait_s=0.01)
    results = await scheduler.generate(KEY, specs("a", "b", "c", "d"))
    assert [r.output for r in results] == ["a@0", "b@1", "c@2", "d@3"]
    assert [len(batch) for _, batch in runner.batches] == [1, 1, 1, 1]

    runner.oom_above = 0
    with pytest.raises(OutOfDeviceMemory) as error:
        await scheduler.generate(KEY, specs("too big"))
    assert status_of(error.value) == 503
    runner.oom_above = None
    assert len(await scheduler.generate(KEY, specs("fine"))) == 1
    await scheduler.close()


def test_constructor_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="max_batch_images"):
        BatchScheduler(FakeRunner(), max_batch_images=0, max_wait_s=0, max_queue_images=1)
    with pytest.raises(ValueError, match="max_queue_images"):
        BatchScheduler(FakeRunner(), max_batch_images=1, max_wait_s=0, max_queue_images=0)


async def test_a_failing_batch_observer_never_stops_the_scheduler() -> None:
    def broken_observer(device: str, images: int, seconds: float) -> None:
        raise ValueError("metrics bug")

    scheduler = make(FakeRunner(), max_wait_s=0.0, on_batch=broken_observer)
    assert [r.output for r in await scheduler.generate(KEY, specs("a"))] == ["a@0"]
    assert [r.output for r in await scheduler.generate(KEY, specs("b"))] == ["b@0"]
    await scheduler.close()


async def test_a_dead_loop_is_restarted_by_the_next_request() -> None:
    scheduler = make(FakeRunner(), max_wait_s=0.0)
    await scheduler.generate(KEY, specs("a"))
    scheduler._tasks["default"].cancel()  # stands in for a bug that ends the loop
    await asyncio.sleep(0)
    assert [r.output for r in await asyncio.wait_for(scheduler.generate(KEY, specs("b")), 10)] == ["b@0"]
    await scheduler.close()


async def test_device_time_reported_by_the_runner_is_used_also_after_a_split() -> None:
    """A runner that times its own device use (not its wait for a shared GPU) is believed, per batch."""
    runner = FakeRunner(oom_above=2, device_s_per_image=0.5)
    scheduler = make(runner, max_wait_s=5.0)
    results = await scheduler.generate(KEY, specs(*"abcd"))  # 4 does not fit: split into 2 + 2
    assert [len(batch) for _, batch in runner.batches] == [2, 2]
    assert [result.device_ms for result in results] == [1000.0] * 4 and [r.batch_size for r in results] == [2] * 4
    assert scheduler.stats.device_seconds == 2.0 and scheduler.stats.batches == 2
    await scheduler.close()

"""One model on several devices: one queue, one runner per device, each batch on a device that is free."""

from __future__ import annotations

import asyncio

import pytest

from pipelines.errors import GenerationFailed, OutOfDeviceMemory
from pipelines.scheduler import BatchScheduler
from tests.unit.pipelines.test_scheduler import KEY, OTHER_SIZE, FakeRunner, specs


def two_devices(**kw) -> tuple[BatchScheduler, FakeRunner, FakeRunner]:
    first, second = FakeRunner(), FakeRunner()
    kw.setdefault("max_batch_images", 2)
    kw.setdefault("max_wait_s", 0.0)
    kw.setdefault("max_queue_images", 64)
    return BatchScheduler({"gpu0": first, "gpu1": second}, **kw), first, second


async def test_each_batch_runs_on_one_device_and_says_which() -> None:
    scheduler, first, second = two_devices()
    first.gate, second.gate = asyncio.Event(), asyncio.Event()
    requests = [asyncio.create_task(scheduler.generate(KEY, specs("a", "b"))),
                asyncio.create_task(scheduler.generate(OTHER_SIZE, specs("c", "d")))]
    await asyncio.wait_for(asyncio.gather(first.started.wait(), second.started.wait()), 10)
    first.gate.set()
    second.gate.set()
    results = await asyncio.gather(*requests)
    assert {result.device for result in results[0]} | {result.device for result in results[1]} == {"gpu0", "gpu1"}
    for request in results:  # both images of a request were one batch, on one device
        assert len({(r.batch_id, r.device) for r in request}) == 1
    assert scheduler.devices == ("gpu0", "gpu1")
    await scheduler.close()


async def test_no_device_idles_while_work_is_queued() -> None:
    """gpu0 is stuck on a long batch: everything queued after it runs on gpu1, which never waits for gpu0."""
    scheduler, first, second = two_devices(max_batch_images=1)
    first.gate = asyncio.Event()
    held = asyncio.create_task(scheduler.generate(KEY, specs("long")))
    await asyncio.wait_for(first.started.wait(), 10)
    later = await asyncio.wait_for(asyncio.gather(*(scheduler.generate(KEY, specs(f"p{i}")) for i in range(5))), 10)
    assert [result[0].device for result in later] == ["gpu1"] * 5
    assert not held.done()
    first.gate.set()
    assert (await held)[0].device == "gpu0"
    stats = scheduler.stats.devices
    assert (stats["gpu0"].batches, stats["gpu1"].batches, stats["gpu1"].images) == (1, 5, 5)
    await scheduler.close()


async def test_a_batch_that_runs_out_of_memory_is_halved_on_its_own_device() -> None:
    first, second = FakeRunner(oom_above=1), FakeRunner(oom_above=1)
    scheduler = BatchScheduler({"gpu0": first, "gpu1": second}, max_batch_images=4, max_wait_s=0.0,
                               max_queue_images=16)
    results = await scheduler.generate(KEY, specs("a", "b", "c", "d"))
    assert [r.output for r in results] == ["a@0", "b@1", "c@2", "d@3"]
    assert len({r.device for r in results}) == 1  # the halves ran where the batch failed
    assert all(r.batch_size == 1 for r in results)
    await scheduler.close()


async def test_the_observer_is_told_which_device_ran_each_batch() -> None:
    seen: list[tuple[str, int]] = []
    scheduler, first, second = two_devices(on_batch=lambda device, images, seconds: seen.append((device, images)))
    first.gate = asyncio.Event()
    held = asyncio.create_task(scheduler.generate(KEY, specs("a")))
    await asyncio.wait_for(first.started.wait(), 10)
    await scheduler.generate(KEY, specs("b", "c"))
    first.gate.set()
    await held
    assert sorted(seen) == [("gpu0", 1), ("gpu1", 2)]
    await scheduler.close()


async def test_a_dead_device_loop_is_restarted_by_the_next_request() -> None:
    scheduler, first, second = two_devices()
    await scheduler.generate(KEY, specs("a"))
    scheduler._tasks["gpu1"].cancel()  # stands in for a bug that ends one device's loop
    await asyncio.sleep(0)
    results = await asyncio.wait_for(asyncio.gather(*(scheduler.generate(KEY, specs(f"p{i}")) for i in range(4))), 10)
    assert all(r[0].output.startswith("p") for r in results)
    assert set(scheduler._tasks) == {"gpu0", "gpu1"} and not any(t.done() for t in scheduler._tasks.values())
    await scheduler.close()


def test_a_scheduler_needs_a_device() -> None:
    with pytest.raises(ValueError, match="at least one runner"):
        BatchScheduler({}, max_batch_images=1, max_wait_s=0, max_queue_images=1)


async def _one_job_on_each(scheduler: BatchScheduler, runners: list[FakeRunner]) -> list[object]:
    """Hold every device on a gate until each has taken one job, then let them all run."""
    for runner in runners:
        runner.gate = asyncio.Event()
    jobs = [asyncio.create_task(scheduler.generate(KEY, specs(f"p{i}"))) for i in range(len(runners))]
    await asyncio.wait_for(asyncio.gather(*(runner.started.wait() for runner in runners)), 10)
    for runner in runners:
        runner.gate.set()
    return await asyncio.gather(*jobs, return_exceptions=True)


async def test_a_device_whose_batch_failed_fails_only_that_batch() -> None:
    broken, good = FakeRunner(fail=True), FakeRunner()
    scheduler = BatchScheduler({"bad": broken, "good": good}, max_batch_images=1, max_wait_s=0.0,
                               max_queue_images=16)
    outcomes = await _one_job_on_each(scheduler, [broken, good])
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    served = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], GenerationFailed)
    assert len(served) == 1 and served[0][0].device == "good"
    assert (scheduler.stats.devices["good"].batches, scheduler.stats.devices["bad"].batches) == (1, 0)
    await scheduler.close()


async def test_one_image_too_big_for_one_device_is_a_clear_error_and_the_other_device_goes_on() -> None:
    small, big = FakeRunner(oom_above=0), FakeRunner()
    scheduler = BatchScheduler({"small": small, "big": big}, max_batch_images=1, max_wait_s=0.0,
                               max_queue_images=16)
    outcomes = await _one_job_on_each(scheduler, [small, big])
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], OutOfDeviceMemory) and "smaller size" in str(failed[0])
    assert [o[0].device for o in outcomes if not isinstance(o, BaseException)] == ["big"]
    await scheduler.close()

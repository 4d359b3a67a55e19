"""Components started in order and stopped in reverse, also when a later one fails to start."""

from __future__ import annotations

import asyncio

import pytest

from server.lifecycle import BackgroundTask, ClosedOnStop, running


class Recorder:
    def __init__(self, name: str, log: list[str], fail_start: bool = False) -> None:
        self.name, self.log, self.fail_start = name, log, fail_start

    async def start(self) -> None:
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")
        self.log.append(f"start {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


async def test_components_start_in_order_and_stop_in_reverse() -> None:
    log: list[str] = []
    async with running([Recorder("db", log), Recorder("backends", log), Recorder("sweeper", log)]):
        log.append("serving")
    assert log == ["start db", "start backends", "start sweeper", "serving",
                   "stop sweeper", "stop backends", "stop db"]


async def test_a_failed_start_stops_what_had_started_and_raises() -> None:
    log: list[str] = []
    with pytest.raises(RuntimeError, match="backends cannot start"):
        async with running([Recorder("db", log), Recorder("backends", log, fail_start=True), Recorder("x", log)]):
            log.append("serving")
    assert log == ["start db", "stop db"]


async def test_a_background_task_runs_until_stopped() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = BackgroundTask("ticker", tick)
    await task.stop()  # stopping what never started is harmless
    await task.start()
    await asyncio.sleep(0.01)
    await task.stop()
    seen = ticks
    await asyncio.sleep(0.01)
    assert seen > 0 and ticks == seen


async def test_closed_on_stop_calls_close_once_at_stop() -> None:
    closed: list[bool] = []
    component = ClosedOnStop(lambda: closed.append(True))
    async with running([component]):
        assert closed == []
    assert closed == [True]

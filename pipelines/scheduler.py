"""The batching scheduler: plain asyncio, no torch, so it is tested against a fake runner.

One scheduler per local model. Jobs are single images. Jobs with the same `BatchKey` (model, size,
steps, guidance, sequence length) are merged into one runner call, up to `max_batch_images`.

A model may run on several devices (one runner each, e.g. one pipeline copy per GPU). They share the one
queue: each device has its own loop, and whichever device is free forms the next batch (one at a time, so
two devices never split a batch that was filling), so no device idles while work is queued.

When to start a batch. A job that arrived while the device was busy has already waited, so when the device
frees up its batch starts at once with whatever compatible jobs are queued: batching never adds idle time
to a busy device. On an idle device, a request that arrives when nothing else has arrived for longer than
`max_wait_s` starts at once too: nothing suggests a partner is coming, so waiting would only add latency
to a lone request. Only under load (arrivals closer together than `max_wait_s`) does the oldest job on an
idle device wait, at most `max_wait_s` after it arrived, for its batch to fill.

Jobs whose future is already done (the client went away) are dropped before they cost device time. If a
batch fails, every job in it gets the error; a batch that runs out of device memory is split in halves and
retried, down to single images.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipelines.errors import GenerationFailed, ImageServeError, OutOfDeviceMemory, QueueFull

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchKey:
    """What must be equal for images to share one pipeline call."""

    model: str
    width: int
    height: int
    steps: int
    guidance: float
    max_sequence_length: int | None = None
    mode: str = "generate"  # "generate", "img2img" (edits without a mask, variations) or "inpaint"
    strength: float = 0.0  # edits: how far from the input image


@dataclass(frozen=True)
class ImageJobSpec:
    """What varies per image inside a batch."""

    prompt: str
    seed: int
    negative_prompt: str | None = None
    image: Any = field(default=None, compare=False)  # edits: the input pixels (H, W, 3) uint8
    mask: Any = field(default=None, compare=False)  # inpainting: (H, W) bool, True where to repaint
    previews: int = 0  # streaming: previews of this image to decode along the way
    on_preview: Any = field(default=None, compare=False)  # called (preview index, uint8 pixels) from the device


@dataclass(eq=False)
class Job:
    key: BatchKey
    spec: ImageJobSpec
    future: asyncio.Future[JobResult]
    enqueued_at: float
    request_id: str = ""
    quiet_before: float = 0.0  # seconds since the previous request arrived (inf for the first)


@dataclass(frozen=True)
class JobResult:
    output: Any
    batch_size: int
    device_ms: float
    batch_id: int
    queued_ms: float = 0.0  # from the job's arrival until its batch started on the device
    device: str = ""  # the label of the device that ran the batch


class DeviceOutOfMemory(Exception):
    """Raised by a runner when a batch does not fit on the device."""


@dataclass(frozen=True)
class TimedOutputs:
    """A runner's outputs with the device time it measured itself.

    The scheduler can only time the whole `run_batch` await, which includes waiting for a device shared with
    other models (`device_lock`); a runner that knows when the device was really busy returns this instead
    of a plain list, so device busy time and `perf.device_ms` stay true.
    """

    outputs: list[Any]
    device_seconds: float


class BatchRunner(Protocol):
    async def run_batch(self, key: BatchKey, specs: Sequence[ImageJobSpec]) -> list[Any] | TimedOutputs:
        """Return exactly one output per spec, in order (optionally with the device time, see TimedOutputs)."""
        ...


@dataclass
class DeviceStats:
    """What one device of the model has done."""

    batches: int = 0
    images: int = 0
    device_seconds: float = 0.0
    busy: bool = False  # running a batch now


@dataclass
class SchedulerStats:
    dropped_jobs: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    devices: dict[str, DeviceStats] = field(default_factory=dict)

    @property
    def batches(self) -> int:
        return sum(device.batches for device in self.devices.values())

    @property
    def images(self) -> int:
        return sum(device.images for device in self.devices.values())

    @property
    def device_seconds(self) -> float:
        return sum(device.device_seconds for device in self.devices.values())


BatchCallback = Callable[[str, int, float], None]  # (device label, images in the batch, device seconds)


class BatchScheduler:
    """`runners` is one runner, or several keyed by device label (each batch runs on exactly one of them)."""

    def __init__(
        self,
        runners: BatchRunner | Mapping[str, BatchRunner],
        *,
        max_batch_images: int,
        max_wait_s: float,
        max_queue_images: int,
        name: str = "model",
        clock: Callable[[], float] = time.monotonic,
        on_batch: BatchCallback | None = None,
    ) -> None:
        if max_batch_images < 1:
            raise ValueError("max_batch_images must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")
        if max_queue_images < 1:
            raise ValueError("max_queue_images must be at least 1")
        self._runners: dict[str, BatchRunner] = (
            dict(runners) if isinstance(runners, Mapping) else {"default": runners})
        if not self._runners:
            raise ValueError("a scheduler needs at least one runner")
        self._max_batch = max_batch_images
        self._max_wait = max_wait_s
        self._max_queue = max_queue_images
        self._name = name
        self._clock = clock
        self._on_batch = on_batch
        self._queue: list[Job] = []
        self._arrival = asyncio.Event()
        self._forming = asyncio.Lock()  # held by the free device that is forming the next batch
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._batch_counter = 0
        self._last_arrival = float("-inf")
        self.stats = SchedulerStats(devices={label: DeviceStats() for label in self._runners})

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self._runners)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        for label, runner in self._runners.items():
            if label not in self._tasks:
                self._tasks[label] = asyncio.create_task(self._loop(label, runner),
                                                         name=f"scheduler-{self._name}-{label}")

    def _restart_if_dead(self) -> None:
        """The loops should never end; if a bug ever kills one, log why and start a new one, so requests
        fail or succeed instead of hanging forever."""
        for label, task in list(self._tasks.items()):
            if task.done():
                if not task.cancelled():
                    logger.error("model %s: the scheduler loop of %s died; restarting it", self._name, label,
                                 exc_info=task.exception())
                del self._tasks[label]
        self.start()

    async def close(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(QueueFull("The server is shutting down.", retry_after=10))
        self._queue.clear()

    # -- submitting --------------------------------------------------------------------------------

    @property
    def queued_images(self) -> int:
        return sum(1 for job in self._queue if not job.future.done())

    def submit_many(self, key: BatchKey, specs: Sequence[ImageJobSpec], request_id: str = "") -> list[Job]:
        """Queue all images of one request, or none of them if the queue cannot take them all."""
        if len(self._tasks) < len(self._runners) or any(task.done() for task in self._tasks.values()):
            self._restart_if_dead()
        if self.queued_images + len(specs) > self._max_queue:
            raise QueueFull(
                f"Model '{self._name}' is busy: its queue is full. Retry in a few seconds.", retry_after=5
            )
        loop = asyncio.get_running_loop()
        now = self._clock()
        quiet, self._last_arrival = now - self._last_arrival, now
        jobs = [Job(key, spec, loop.create_future(), now, request_id, quiet) for spec in specs]
        self._queue.extend(jobs)
        self._arrival.set()
        return jobs

    async def generate(self, key: BatchKey, specs: Sequence[ImageJobSpec], request_id: str = "") -> list[JobResult]:
        """Queue the images and wait for all of them; cancelling this cancels every queued job."""
        jobs = self.submit_many(key, specs, request_id)
        try:
            return list(await asyncio.gather(*(job.future for job in jobs)))
        except BaseException:
            for job in jobs:
                job.future.cancel()
            raise

    # -- the loop ----------------------------------------------------------------------------------

    def _drop_abandoned(self) -> None:
        kept = [job for job in self._queue if not job.future.done()]
        self.stats.dropped_jobs += len(self._queue) - len(kept)
        self._queue = kept

    def _matching(self, key: BatchKey) -> list[Job]:
        return [job for job in self._queue if job.key == key and not job.future.done()][: self._max_batch]

    async def _next_batch(self, device_free_since: float) -> list[Job]:
        """Wait for work, then for the batch of the oldest job to fill up or its wait to end."""
        while True:
            self._drop_abandoned()
            if self._queue:
                break
            self._arrival.clear()
            await self._arrival.wait()
        head = self._queue[0]
        arrived_while_busy = head.enqueued_at <= device_free_since
        arrived_alone = head.quiet_before > self._max_wait  # nothing else is arriving: do not wait for it
        deadline = self._clock() if arrived_while_busy or arrived_alone else head.enqueued_at + self._max_wait
        while len(self._matching(head.key)) < self._max_batch and not head.future.done():
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), timeout=remaining)
            except TimeoutError:
                break
        batch = self._matching(head.key)
        taken = set(map(id, batch))
        self._queue = [job for job in self._queue if id(job) not in taken]
        return batch

    async def _loop(self, label: str, runner: BatchRunner) -> None:
        """One device: while it is free it queues for the right to form the next batch, then runs it."""
        free_since = float("-inf")
        while True:
            async with self._forming:
                batch = await self._next_batch(free_since)
            if batch:
                await self._run(batch, label, runner)
                free_since = self._clock()

    async def _run(self, batch: list[Job], label: str, runner: BatchRunner) -> None:
        self._batch_counter += 1
        batch_id = self._batch_counter
        device = self.stats.devices[label]
        device.busy = True
        started = time.perf_counter()
        try:
            outputs = await runner.run_batch(batch[0].key, [job.spec for job in batch])
            device_s = time.perf_counter() - started
            if isinstance(outputs, TimedOutputs):
                outputs, device_s = outputs.outputs, outputs.device_seconds
            if len(outputs) != len(batch):
                raise RuntimeError(f"runner returned {len(outputs)} outputs for {len(batch)} jobs")
        except asyncio.CancelledError:
            for job in batch:
                job.future.cancel()
            raise
        except DeviceOutOfMemory:
            await self._retry_smaller(batch, label, runner)
            return
        except Exception as exc:  # noqa: BLE001 - every job of the batch gets a clear error
            self._fail(batch, exc)
            return
        finally:
            device.busy = False
        self._record(label, len(batch), device_s)
        for job, output in zip(batch, outputs, strict=True):
            if not job.future.done():
                job.future.set_result(JobResult(output, len(batch), device_s * 1000, batch_id,
                                                 max(0.0, self._clock() - job.enqueued_at - device_s) * 1000,
                                                 label))

    async def _retry_smaller(self, batch: list[Job], label: str, runner: BatchRunner) -> None:
        if len(batch) == 1:
            logger.warning("model %s: one %dx%d image does not fit in device memory", self._name,
                           batch[0].key.width, batch[0].key.height)
            self._fail(batch, OutOfDeviceMemory(
                f"Model '{self._name}' ran out of device memory for one image at "
                f"{batch[0].key.width}x{batch[0].key.height}; try a smaller size."
            ))
            return
        half = len(batch) // 2
        logger.warning("model %s: batch of %d ran out of device memory; retrying as %d + %d (on %s)",
                       self._name, len(batch), half, len(batch) - half, label)
        for part in (batch[:half], batch[half:]):
            live = [job for job in part if not job.future.done()]
            if live:
                await self._run(live, label, runner)

    def _fail(self, batch: list[Job], exc: Exception) -> None:
        if isinstance(exc, ImageServeError):
            error: ImageServeError = exc
        else:
            logger.error("model %s: batch of %d failed (requests %s)", self._name, len(batch),
                         sorted({job.request_id for job in batch}), exc_info=exc)
            error = GenerationFailed(f"Model '{self._name}' failed to generate this image; the error was logged.")
        for job in batch:
            if not job.future.done():
                job.future.set_exception(error)

    def _record(self, label: str, size: int, device_s: float) -> None:
        device = self.stats.devices[label]
        device.batches += 1
        device.images += size
        device.device_seconds += device_s
        self.stats.batch_sizes.append(size)
        if len(self.stats.batch_sizes) > 1000:
            del self.stats.batch_sizes[:500]
        if self._on_batch is not None:
            try:
                self._on_batch(label, size, device_s)
            except Exception:  # an observer (metrics) must never stop the device loop
                logger.exception("model %s: on_batch callback failed", self._name)

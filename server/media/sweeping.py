"""The lifecycle every image store shares: check the store at start (one line and a refusal if it cannot work),
then delete expired images now and every `sweep_every` seconds until `stop()`, logging (not dying on) the
errors a store may meet while it sweeps."""

from __future__ import annotations

import asyncio
import logging

from server.lifecycle import BackgroundTask
from server.media.stored import StorageSetupError

logger = logging.getLogger(__name__)


class SweepingStore:
    """Base of the stores: subclasses give `check`, `delete_expired`, `describe` and the errors to survive."""

    sweep_errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, sweep_every: float) -> None:
        self._sweep_every = sweep_every
        self._sweeper = BackgroundTask("image-store-sweep", self._sweep_forever)

    def check(self) -> None:
        raise NotImplementedError

    def delete_expired(self) -> int:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self.check)
        except StorageSetupError as exc:
            logger.error("cannot start: %s", exc)
            raise
        await self._sweeper.start()

    async def stop(self) -> None:
        await self._sweeper.stop()

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.delete_expired)
            except self.sweep_errors as exc:
                logger.warning("could not sweep expired images in %s: %s", self.describe(),
                               (exc.strerror or str(exc)) if isinstance(exc, OSError) else type(exc).__name__)
            await asyncio.sleep(self._sweep_every)

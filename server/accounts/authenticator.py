"""Who is calling: `KeyAuthenticator` checks a request's bearer key and returns its `Principal`.

Keys from the environment are matched in memory (`server.accounts.credentials.EnvKeys`), then keys made
by `imageserve keys create` are looked up in the database by hash (`server.accounts.keys.KeyStore`, a
read-only lookup). Wrong keys are throttled per client address (`server.accounts.throttle`).

The server is open (every request is anonymous) only when there is no key at all, neither in the
environment nor active in the database, and only on loopback: `server.cli.serve.check_exposure` refuses to
start otherwise, and `KeyAuthenticator` refuses requests if the last key is revoked while listening
elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from server.accounts.credentials import ANONYMOUS, EnvKeys, Principal, bearer_token
from server.accounts.keys import KeyStore
from server.accounts.throttle import FailureLimiter
from server.errors import AuthenticationError

logger = logging.getLogger(__name__)


class KeyAuthenticator:
    """Bearer keys from the environment (in memory, constant time), then from the database by hash.

    `env_keys` are the parsed `IMAGESERVE_API_KEYS` (`parse_api_keys`, against the configured tiers) and
    `pepper` names them (`load_key_pepper`; any bytes when there are none); `allow_open`: whether a server
    with no key at all may serve anonymous requests (it listens on loopback only).

    Wrong keys count against the client address; past `failures_per_minute` it gets 429s (see
    `FailureLimiter`). The count is per process, and the address is the TCP peer's (behind a reverse
    proxy, the proxy's: `X-Forwarded-For` is not trusted). Database lookups run in a worker thread.
    """

    def __init__(self, store: KeyStore, env_keys: dict[str, str], *, pepper: bytes, allow_open: bool,
                 failures_per_minute: int = 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.env_keys = env_keys
        self.pepper = pepper
        self._env = EnvKeys(env_keys, pepper)
        self.allow_open = allow_open
        self.failures = FailureLimiter(failures_per_minute, clock=clock)

    def prepare(self) -> None:
        """Sync: create or migrate the database and give the environment keys their rows."""
        self.store.sync_env_keys(self.env_keys, self.pepper)

    async def is_open(self) -> bool:
        return not self._env and not await asyncio.to_thread(self.store.has_active_keys)

    async def authenticate(self, authorization: str | None, client_ip: str | None = None) -> Principal:
        self.failures.check(client_ip)
        try:
            token = bearer_token(authorization)
        except AuthenticationError:
            if await self._open():
                return ANONYMOUS
            raise
        principal = self._env.match(token)
        if principal is not None:
            return principal
        record = await asyncio.to_thread(self.store.find, token)
        if record is not None and record.active:
            return record.principal()
        if record is None and await self._open():
            return ANONYMOUS
        self.failures.record(client_ip)
        if record is not None:
            logger.info("refused revoked key %s from %s", record.name, client_ip)
            raise AuthenticationError("This API key has been revoked.")
        logger.info("refused an unknown API key from %s", client_ip)
        raise AuthenticationError("Incorrect API key provided.")

    async def _open(self) -> bool:
        if not await self.is_open():
            return False
        if not self.allow_open:
            raise AuthenticationError("No API key is configured on this server; create one with "
                                      "`imageserve keys create`.")
        return True

"""Small connection pools to environment databases, kept by the api process: opening a
connection (TLS, SCRAM) costs more than a whole cached schema read."""

import asyncio
import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


class EnvironmentEngines:
    def __init__(self, capacity: int = 64) -> None:
        self._capacity = capacity
        self._engines: OrderedDict[uuid.UUID, tuple[str, AsyncEngine]] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def get(
        self, environment_id: uuid.UUID, sealed_url: bytes, unseal: Callable[[bytes], str]
    ) -> AsyncEngine:
        """The environment's engine; the URL is decrypted only to make a new one (when the
        environment is new here, or its credentials changed)."""
        digest = hashlib.sha256(sealed_url).hexdigest()
        cached = self._engines.get(environment_id)
        if cached is not None and cached[0] == digest:
            self._engines.move_to_end(environment_id)
            return cached[1]
        if cached is not None:
            self._dispose_later(cached[1])
        database_url = unseal(sealed_url)
        # No pre-ping (a round trip per read): a connection found dead is retried once.
        engine = create_async_engine(database_url, pool_size=2, max_overflow=4, pool_recycle=300)
        self._engines[environment_id] = (digest, engine)
        while len(self._engines) > self._capacity:
            _, (_, evicted) = self._engines.popitem(last=False)
            self._dispose_later(evicted)
        return engine

    def _dispose_later(self, engine: AsyncEngine) -> None:
        task = asyncio.get_running_loop().create_task(engine.dispose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def dispose(self) -> None:
        engines = [engine for _, engine in self._engines.values()]
        self._engines.clear()
        await asyncio.gather(*(e.dispose() for e in engines), *self._closing)

"""Many small reads of the same kind, answered by one query per batch in a worker thread.

Thousands of node agents heartbeat every few seconds, and each heartbeat needs its node's state. One
query per heartbeat costs the event loop (or the thread pool) a round trip each, and under load the
round trips dominate. ``BatchedLookup`` gathers the keys asked for while a query runs and fetches them
all with the next one: a heartbeat waits for at most two queries, the loop does no SQL, and the cost
per heartbeat is a dictionary entry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BatchedLookup(Generic[K, V]):
    """``await lookup.get(key)``: the value ``fetch`` returns for ``key`` (None when it returns none).
    ``fetch(keys)`` runs in the lookup's own thread, one batch at a time; it must be thread-safe
    (open its own database connection)."""

    def __init__(self, fetch: Callable[[list[K]], Mapping[K, V]], name: str) -> None:
        self._fetch = fetch
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._runner: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def get(self, key: K) -> V | None:
        fut: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(fut)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch, self._waiting = self._waiting, {}  # everything asked for while the last query ran
            try:
                found = await loop.run_in_executor(self._thread, self._fetch, list(batch))
            except Exception as e:
                _settle(batch.values(), error=e)
                continue
            for key, futures in batch.items():
                _settle([futures], value=found.get(key))


def _settle(groups: Iterable[list[asyncio.Future[V | None]]], value: V | None = None, error: BaseException | None = None) -> None:
    for futures in groups:
        for f in futures:
            if f.done():  # its caller gave up (cancelled)
                continue
            if error is not None:
                f.set_exception(error)
            else:
                f.set_result(value)

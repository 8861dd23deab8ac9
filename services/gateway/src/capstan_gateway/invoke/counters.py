"""Shared counters for limits: ``reserve`` adds up to ``amount`` to a named counter without passing
``limit`` (atomically, whoever else adds), ``add`` adds unconditionally (usage beyond a reservation).

``KvCounters`` keeps them in JetStream KV (compare-and-set on the entry's revision), so every gateway
process counts against the same numbers; ``LocalCounters`` is the same contract for a gateway without
NATS (one process: nothing to share). Counter names end in their window (``...<window-index>``), and the
buckets' age limit removes old windows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

# Second and minute windows live an hour; day windows two days.
SHORT_BUCKET = "capstan_limits"
DAY_BUCKET = "capstan_limits_day"
DAY_S = 86400


class Counters(Protocol):
    async def reserve(self, name: str, window_s: int, amount: int, limit: int) -> tuple[int, int]:
        """Add min(amount, what is left under limit); returns (granted, the counter's new value)."""
        ...

    async def add(self, name: str, window_s: int, amount: int) -> int:
        """Add ``amount`` whatever the limit; returns the new value."""
        ...


class LocalCounters:
    def __init__(self) -> None:
        self._values: dict[str, int] = {}

    async def reserve(self, name: str, window_s: int, amount: int, limit: int) -> tuple[int, int]:
        cur = self._values.get(name, 0)
        grant = max(0, min(amount, limit - cur))
        self._values[name] = cur + grant
        self._forget_old(name)
        return grant, cur + grant

    async def add(self, name: str, window_s: int, amount: int) -> int:
        self._values[name] = self._values.get(name, 0) + amount
        return self._values[name]

    def _forget_old(self, name: str) -> None:
        if len(self._values) > 100_000:  # windows are short: keep the newest half
            for k in list(self._values)[: len(self._values) // 2]:
                del self._values[k]


class KvCounters:
    def __init__(self, short: KeyValue, day: KeyValue) -> None:
        self._short = short
        self._day = day

    @classmethod
    async def open(cls, js: JetStreamContext) -> KvCounters:
        short = await _bucket(js, SHORT_BUCKET, 3600)
        day = await _bucket(js, DAY_BUCKET, 2 * DAY_S)
        return cls(short, day)

    def _kv(self, window_s: int) -> KeyValue:
        return self._day if window_s >= DAY_S else self._short

    async def reserve(self, name: str, window_s: int, amount: int, limit: int) -> tuple[int, int]:
        return await self._cas(self._kv(window_s), name, amount, limit)

    async def add(self, name: str, window_s: int, amount: int) -> int:
        return (await self._cas(self._kv(window_s), name, amount, None))[1]

    @staticmethod
    async def _cas(kv: KeyValue, name: str, amount: int, limit: int | None) -> tuple[int, int]:
        result = (0, 0)

        def change(value: bytes | None) -> bytes | None:
            nonlocal result
            cur = int(value or b"0")
            grant = amount if limit is None else max(0, min(amount, limit - cur))
            result = (grant, cur + grant)
            return str(cur + grant).encode() if grant else None

        await compare_and_set(kv, name, change)
        return result


async def compare_and_set(kv: KeyValue, key: str, change: Callable[[bytes | None], bytes | None]) -> bytes | None:
    """Replace the entry's value by ``change(value)`` (None: leave it) unless another writer came first,
    then read again and retry. ``value`` is None when the key does not exist. Returns what was written
    (None when ``change`` left it)."""
    for attempt in range(64):
        try:
            entry = await kv.get(key)
            value, rev = entry.value, entry.revision
        except KeyNotFoundError:
            value, rev = None, None
        new = change(value)
        if new is None:
            return None
        try:
            if rev is None:
                await kv.create(key, new)
            else:
                await kv.update(key, new, last=rev)
            return new
        except KeyWrongLastSequenceError:
            await asyncio.sleep(0.0005 * attempt)  # another process won: read again
    raise RuntimeError(f"{key}: too much contention")


async def _bucket(js: JetStreamContext, name: str, ttl_s: int) -> KeyValue:
    return await open_bucket(js, KeyValueConfig(bucket=name, history=1, ttl=float(ttl_s), storage=StorageType.MEMORY))


async def open_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """The bucket as it exists (another gateway, or the inference service, may have made it), else
    made with ``config``."""
    try:
        return await js.key_value(config.bucket)
    except BucketNotFoundError:
        return await js.create_key_value(config)

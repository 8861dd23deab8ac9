"""Where per-minute metric samples and replica load live: JetStream KV buckets shared by every
gateway process, or this process's memory when the gateway runs without NATS."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Protocol

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from .counters import compare_and_set, open_bucket
from .metrics import KEEP_MINUTES, LOAD_BUCKET, METRICS_BUCKET

STALE_MS = 5000  # a gateway's share of a replica's load older than this no longer counts


class EntryStore(Protocol):
    async def put_samples(self, entries: dict[str, bytes]) -> None: ...
    async def samples(self, service_id: str) -> list[bytes]: ...
    async def put_load(self, key: str, gateway_id: str, share: dict[str, Any]) -> dict[str, Any]:
        """Record this gateway's share of a replica's load; the replica's load summed over gateways."""
        ...


class MemoryStore:
    def __init__(self) -> None:
        self._samples: dict[str, bytes] = {}
        self.load: dict[str, dict[str, Any]] = {}

    async def put_samples(self, entries: dict[str, bytes]) -> None:
        self._samples.update(entries)
        oldest = int(time.time() // 60) - KEEP_MINUTES
        for k in [k for k in self._samples if int(k.split(".")[1]) < oldest]:
            del self._samples[k]

    async def samples(self, service_id: str) -> list[bytes]:
        return [v for k, v in self._samples.items() if k.startswith(service_id + ".")]

    async def put_load(self, key: str, gateway_id: str, share: dict[str, Any]) -> dict[str, Any]:
        self.load[key] = merged = merge_load(self.load.get(key), gateway_id, share)
        return merged


class KvStore:
    def __init__(self, samples_kv: KeyValue, load_kv: KeyValue) -> None:
        self._samples = samples_kv
        self._load = load_kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> KvStore:
        samples = await open_bucket(js, KeyValueConfig(
            bucket=METRICS_BUCKET, history=1, ttl=float(KEEP_MINUTES * 60 + 120), storage=StorageType.FILE))
        load = await open_bucket(js, KeyValueConfig(
            bucket=LOAD_BUCKET, history=1, ttl=600.0, storage=StorageType.MEMORY))
        return cls(samples, load)

    async def put_samples(self, entries: dict[str, bytes]) -> None:
        await asyncio.gather(*(self._samples.put(k, v) for k, v in entries.items()))

    async def samples(self, service_id: str) -> list[bytes]:
        """Every gateway's latest entry of each minute of the service, read in one pass."""
        watcher = await self._samples.watch(f"{service_id}.>", ignore_deletes=True)
        out: list[bytes] = []
        try:
            async with asyncio.timeout(10):
                async for entry in watcher:
                    if entry is None:  # the end of what the bucket holds now
                        break
                    if entry.value:
                        out.append(entry.value)
        finally:
            await watcher.stop()
        return out

    async def put_load(self, key: str, gateway_id: str, share: dict[str, Any]) -> dict[str, Any]:
        """``<ms-id>.<replica-id>``: this gateway's share replaced, the totals summed (compare-and-set)."""
        merged: dict[str, Any] = {}

        def change(raw: bytes | None) -> bytes:
            nonlocal merged
            merged = merge_load(_loads(raw), gateway_id, share)
            return json.dumps(merged).encode()

        await compare_and_set(self._load, key, change)
        return merged


def merge_load(current: dict[str, Any] | None, gateway_id: str, share: dict[str, Any]) -> dict[str, Any]:
    """The replica's load: {"qps", "in_flight", "queued", "at_ms"} summed over gateways' fresh shares."""
    now = share["at_ms"]
    shares = {g: s for g, s in ((current or {}).get("gateways") or {}).items()
              if isinstance(s, dict) and now - int(s.get("at_ms", 0)) < STALE_MS}
    shares[gateway_id] = share
    return {
        "qps": round(sum(float(s.get("qps", 0)) for s in shares.values()), 3),
        "in_flight": sum(int(s.get("in_flight", 0)) for s in shares.values()),
        "queued": sum(int(s.get("queued", 0)) for s in shares.values()),
        "at_ms": now,
        "gateways": shares,
    }


def _loads(raw: bytes | None) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw or b"")
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None

"""What the invocation routes run on, built in the gateway's lifespan: the routing cache, the pooled
upstream client, the shared counters and stores (JetStream KV when ``CAPSTAN_NATS_URL`` is set), and
two loops: metric samples every 2 s and replica load (``capstan_serving_load``) every second."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import aiohttp
from nats.aio.client import Client as NatsClient

from capstan_core import credentials
from capstan_core.service import connect_nats

from ..settings import GatewaySettings
from .counters import Counters, KvCounters, LocalCounters
from .limits import Budgets
from .metrics import ServingMetrics
from .routes import RouteCache, RouteSource
from .store import EntryStore, KvStore, MemoryStore

log = logging.getLogger(__name__)


class InvokeRuntime:
    def __init__(
        self, cache: RouteCache, counters: Counters, store: EntryStore, gateway_id: str,
        nc: NatsClient | None = None,
    ) -> None:
        self.cache = cache
        self.budgets = Budgets(counters)
        self.metrics = ServingMetrics(gateway_id)
        self.store = store
        self.gateway_id = gateway_id
        self.nc = nc
        self.session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_started: dict[str, tuple[int, float]] = {}

    @classmethod
    async def start(cls, settings: GatewaySettings, source: RouteSource) -> InvokeRuntime:
        gateway_id = settings.gateway_id or uuid.uuid4().hex[:8]
        nc = None
        counters: Counters = LocalCounters()
        store: EntryStore = MemoryStore()
        if settings.nats_url:
            creds = credentials.load(settings.secrets_path, "gateway").nats
            nc = await connect_nats(settings.nats_url, "gateway", creds)
            js = nc.jetstream()
            counters = await KvCounters.open(js)
            store = await KvStore.open(js)
        runtime = cls(RouteCache(source), counters, store, gateway_id, nc)
        runtime.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=settings.invoke_read_timeout_s),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # never carry one caller's cookies to another's call
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        runtime.cache.start()
        runtime._tasks = [
            asyncio.create_task(runtime._every(2.0, runtime.flush_samples), name="invoke-samples"),
            asyncio.create_task(runtime._every(1.0, runtime.publish_load), name="invoke-load"),
        ]
        return runtime

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.cache.stop()
        try:
            await self.flush_samples()
        except Exception as e:
            log.warning("last metric samples not written: %s", e)
        if self.session is not None:
            await self.session.close()
        if self.nc is not None:
            await self.nc.close()

    @staticmethod
    async def _every(period: float, job: Any) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS away for a while: the next round tries again
                log.warning("%s failed: %s", getattr(job, "__name__", job), e)

    async def flush_samples(self) -> None:
        entries = self.metrics.snapshot_entries()
        if entries:
            await self.store.put_samples(entries)

    async def publish_load(self) -> None:
        now = time.monotonic()
        at_ms = int(time.time() * 1000)
        jobs = []
        for svc in self.cache.services.values():
            for version in svc.versions.values():
                queued = self.metrics.queued.get((svc.service_id, version.route.version_id), 0)
                # the version's waiting calls split over its replicas, exactly (the shares add up to it)
                shares = [queued // len(version.replicas) + (i < queued % len(version.replicas))
                          for i in range(len(version.replicas))]
                for r, per_replica_queued in zip(version.replicas, shares, strict=True):
                    before, then = self._last_started.get(r.replica_id, (r.started, now - 1.0))
                    self._last_started[r.replica_id] = (r.started, now)
                    qps = (r.started - before) / max(now - then, 1e-3)
                    share = {"qps": round(qps, 3), "in_flight": r.in_flight, "queued": per_replica_queued,
                             "at_ms": at_ms}
                    jobs.append(self._put_load(svc.service_id, r.replica_id, share))
        seen = {r.replica_id for svc in self.cache.services.values() for v in svc.versions.values() for r in v.replicas}
        gone = set(self._last_started) - seen
        for rid in gone:
            del self._last_started[rid]
        self.budgets.forget_peers(gone)
        await asyncio.gather(*jobs)

    async def _put_load(self, service_id: str, replica_id: str, share: dict[str, Any]) -> None:
        merged = await self.store.put_load(f"{service_id}.{replica_id}", self.gateway_id, share)
        self.budgets.set_peers(replica_id, self.gateway_id, list(merged.get("gateways") or ()))

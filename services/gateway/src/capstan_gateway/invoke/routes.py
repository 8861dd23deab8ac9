"""The routing table the gateway invokes services by: a cached copy of the inference service's
``ListRoutes``, refreshed every ``poll_s`` and at once (rate-limited) when a request names a
service the cache does not know.

Choice: a version by weight among versions with a ready, non-isolated replica, then that version's
replica with the fewest requests in flight from this gateway process. Calls over a version's per-replica
concurrency wait in the cache's ``gate``; replicas the table adds (a scale-up, a replica ready again) wake
as many of them as they bring slots.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from capstan_proto import inference_pb2

from .limits import ConcurrencyGate

log = logging.getLogger(__name__)


class RouteSource(Protocol):
    """Where the table comes from: the inference service's ListRoutes (or a test double)."""

    async def list_routes(self, revision: int) -> inference_pb2.ListRoutesResponse: ...


class GrpcRouteSource:
    """ListRoutes over the internal plane (mTLS, as svc:gateway)."""

    def __init__(self, call: Callable[[inference_pb2.ListRoutesRequest], Awaitable[inference_pb2.ListRoutesResponse]]):
        self._call = call

    async def list_routes(self, revision: int) -> inference_pb2.ListRoutesResponse:
        return await self._call(inference_pb2.ListRoutesRequest(revision=revision))


@dataclass
class Replica:
    replica_id: str
    version_id: str
    address: str
    in_flight: int = 0  # this process's requests to it now
    started: int = 0  # this process's requests to it since it was first seen (for its QPS)


@dataclass
class Version:
    route: inference_pb2.RouteVersion
    replicas: list[Replica] = field(default_factory=list)


@dataclass
class Service:
    route: inference_pb2.ServiceRoute
    versions: dict[str, Version]
    keys_by_digest: dict[bytes, inference_pb2.RouteKey]

    @property
    def service_id(self) -> str:
        return self.route.service_id

    def key_for(self, secret: str) -> inference_pb2.RouteKey | None:
        """The key whose SHA-256 matches ``secret`` (constant-time compare), enabled or not."""
        digest = hashlib.sha256(secret.encode()).digest()
        for known, key in self.keys_by_digest.items():
            if hmac.compare_digest(known, digest):
                return key
        return None

    def routable(self) -> list[Version]:
        return [v for v in self.versions.values() if v.replicas and v.route.weight > 0] or [
            v for v in self.versions.values() if v.replicas  # all weights 0: still serve what is ready
        ]

    def choose(self, exclude: frozenset[str] = frozenset(), rng: random.Random | None = None) -> Replica | None:
        """A replica: a version drawn by weight, then its least busy replica not in ``exclude``."""
        candidates = [v for v in self.routable() if any(r.replica_id not in exclude for r in v.replicas)]
        if not candidates:
            return None
        weights = [max(v.route.weight, 0) for v in candidates]
        pick = (rng or random).choices(candidates, weights=weights)[0] if sum(weights) > 0 else candidates[0]
        replicas = [r for r in pick.replicas if r.replica_id not in exclude]
        return min(replicas, key=lambda r: r.in_flight)


def build_service(route: inference_pb2.ServiceRoute, previous: Service | None) -> Service:
    """One service's routing view; replicas keep their in-flight counts across refreshes."""
    old = {r.replica_id: r for v in (previous.versions.values() if previous else ()) for r in v.replicas}
    versions = {v.version_id: Version(route=v) for v in route.versions}
    for rr in route.replicas:
        if not rr.ready or rr.isolated or not rr.address or rr.version_id not in versions:
            continue
        replica = old.get(rr.replica_id)
        if replica is None or replica.address != rr.address:
            replica = Replica(rr.replica_id, rr.version_id, rr.address)
        versions[rr.version_id].replicas.append(replica)
    keys = {}
    for k in route.keys:
        try:
            keys[bytes.fromhex(k.secret_sha256)] = k
        except ValueError:
            log.warning("service %s: key %s has an invalid secret_sha256; ignored", route.service_id, k.key_id)
    return Service(route=route, versions=versions, keys_by_digest=keys)


class RouteCache:
    def __init__(self, source: RouteSource, poll_s: float = 0.5, miss_refresh_s: float = 0.1) -> None:
        self.source = source
        self.poll_s = poll_s
        self.miss_refresh_s = miss_refresh_s
        self.revision = 0
        self.services: dict[str, Service] = {}
        self.loaded = asyncio.Event()
        self._last_refresh = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_error = ""
        self._last_warned = 0.0
        self.gate = ConcurrencyGate()

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="route-cache")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._refreshing) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the inference service down: keep serving the last table
                if str(e) != self._last_error or time.monotonic() - self._last_warned > 60:
                    log.warning("routing table refresh failed (keeping revision %d): %s", self.revision, e)
                    self._last_error, self._last_warned = str(e), time.monotonic()
            else:
                self._last_error = ""
            await asyncio.sleep(self.poll_s)

    async def refresh(self) -> None:
        """One ListRoutes round; whoever asks while one is under way (the poll, callers that missed)
        shares it instead of starting another or going on with the table it is replacing."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh(), name="route-refresh")
            self._refreshing.add_done_callback(_retrieved)
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        self._last_refresh = time.monotonic()
        resp = await self.source.list_routes(self.revision)
        if not resp.unchanged:
            self.apply(resp)
        self.loaded.set()

    def apply(self, resp: inference_pb2.ListRoutesResponse) -> None:
        before = {r.replica_id for s in self.services.values() for v in s.versions.values() for r in v.replicas}
        self.services = {s.service_id: build_service(s, self.services.get(s.service_id)) for s in resp.services}
        self.revision = resp.revision
        for svc in self.services.values():  # new replicas' slots go to the calls already waiting for one
            for v in svc.versions.values():
                limit = v.route.max_concurrency_per_replica
                added = sum(1 for r in v.replicas if r.replica_id not in before)
                if limit > 0 and added:
                    self.gate.wake(v.route.version_id, added * limit)

    async def get(self, service_id: str) -> Service | None:
        """The service, refreshing once (at most every ``miss_refresh_s``) when it is not known, or known
        without a routable replica: a replica that became ready since the last poll is found at once
        instead of answering 503 to the first callers after a deploy. A refresh already under way is
        waited for, however recent (callers that arrive together all wait for the one ListRoutes)."""
        svc = self.services.get(service_id)
        if svc is not None and svc.routable():
            return svc
        under_way = self._refreshing is not None and not self._refreshing.done()
        if under_way or time.monotonic() - self._last_refresh >= self.miss_refresh_s or not self.loaded.is_set():
            try:
                await asyncio.wait_for(self.refresh(), timeout=2.0)
            except Exception as e:
                log.warning("routing table refresh on a miss failed: %s", e)
        return self.services.get(service_id)


def _retrieved(task: asyncio.Task[None]) -> None:
    """Its failure is logged by whoever waited for it; none may have (they timed out)."""
    if not task.cancelled():
        task.exception()

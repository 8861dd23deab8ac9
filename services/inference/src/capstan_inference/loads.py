"""Replica load for autoscaling: high-volume figures, kept out of the event log.

- The gateways publish each replica's load about every second into the JetStream KV bucket
  ``capstan_serving_load``, key ``<ms-id>.<replica-id>``, value ``{"qps", "in_flight", "queued", "at_ms"}``.
  Concurrency utilisation is (in flight + queued) / the per-replica max concurrency: it passes 100% when
  calls wait for a slot.
- CPU / memory / GPU % come with the agents' ``ReportReplica`` calls and are kept here, in memory (the latest).
Figures older than ``STALE_MS`` are ignored (a gateway or agent that stopped publishing).
"""

from __future__ import annotations

import json
import math
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from capstan_core.clock import Clock

from .domain import group as domain

BUCKET = "capstan_serving_load"
STALE_MS = 10_000


class LoadBoard:
    def __init__(self, js: JetStreamContext, clock: Clock) -> None:
        self.js = js
        self.clock = clock
        self._kv: Any = None
        self._samples: dict[str, tuple[float, float, float | None, int]] = {}  # replica -> (cores, GiB, GPU %, at_ms)

    def sample(self, rid: str, cpu: float, memory_gib: float, gpu_percent: float | None = None) -> None:
        if cpu or memory_gib or gpu_percent is not None:
            gpu = min(max(gpu_percent, 0.0), 100.0) if gpu_percent is not None and math.isfinite(gpu_percent) else None
            self._samples[rid] = (max(cpu, 0.0), max(memory_gib, 0.0), gpu, self.clock.now_ms())

    async def bucket(self) -> Any:
        """The gateways' bucket (they create and own it); None until one has."""
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(BUCKET)
            except BucketNotFoundError:
                return None
        return self._kv

    async def read(self, g: domain.Group | None) -> dict[str, dict[str, float]]:
        """The gateways' latest figures for the group's serving replicas (those a version autoscales on)."""
        if g is None or not any(v["autoscaling"]["mode"] == "hpa" for v in domain.live_versions(g)):
            return {}
        kv = await self.bucket()
        if kv is None:
            return {}  # no gateway has published a figure yet
        out: dict[str, dict[str, float]] = {}
        for rid, r in g["replicas"].items():
            if not domain.serving(r):
                continue
            try:
                entry = await kv.get(f"{g['id']}.{rid}")
            except (KeyNotFoundError, NotFoundError):
                continue
            try:
                body = json.loads(entry.value or b"{}")
                out[rid] = {k: float(body.get(k, 0)) for k in ("qps", "in_flight", "queued", "at_ms")}
            except (ValueError, TypeError, AttributeError):
                continue  # a malformed entry counts as no figure
        return out

    def metric_values(self, g: domain.Group, v: dict[str, Any], metric: str,
                      loads: dict[str, dict[str, float]]) -> list[float]:
        """One value per serving replica of version ``v`` that has a fresh figure."""
        now = self.clock.now_ms()
        spec = v["spec"]
        values = []
        for rid, r in g["replicas"].items():
            if r["version_id"] != v["id"] or not domain.serving(r):
                continue
            if metric in ("qps", "concurrency"):
                f = loads.get(rid)
                if f is None or now - f["at_ms"] > STALE_MS:
                    continue
                limit = spec["rate_limit"]["value"] or 1
                # concurrency: the calls the replica has plus its share of those waiting for a slot. In
                # flight alone stops at the limit (100%), so it could never say how many replicas the
                # demand needs, and a target near 100% would never scale up.
                values.append(f["qps"] if metric == "qps" else 100.0 * (f["in_flight"] + f["queued"]) / limit)
            else:
                s = self._samples.get(rid)
                if s is None or now - s[3] > STALE_MS:
                    continue
                res = spec["resources"]
                if metric == "gpu":
                    if s[2] is not None:
                        values.append(s[2])
                    continue
                values.append(100.0 * (s[0] / res["cpu"] if metric == "cpu" else s[1] / res["memory_gib"]))
        return values

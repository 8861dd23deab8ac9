"""Call monitoring (SPEC §6.8): counters per service, version and key, in per-minute buckets.

Each gateway process counts in memory (no lock, one event loop) and every ``flush_s`` writes its
buckets of the current and previous minute to KV bucket ``capstan_serving_metrics`` under
``<ms-id>.<minute>.<gateway-id>``; the REST time series sums every gateway's entries per minute.
``prometheus_text`` renders this process's totals (since start) for a scrape of /metrics.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

METRICS_BUCKET = "capstan_serving_metrics"
LOAD_BUCKET = "capstan_serving_load"
KEEP_MINUTES = 24 * 60


@dataclass
class Sample:
    received: int = 0
    succeeded: int = 0
    failed: int = 0
    throttled: int = 0
    latency_ms_sum: float = 0.0
    ttft_ms_sum: float = 0.0
    ttft_count: int = 0
    tpot_ms_sum: float = 0.0
    tpot_count: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def merge(self, other: Sample) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def view(self) -> dict[str, Any]:
        """Totals plus the means a chart shows."""
        done = self.succeeded + self.failed
        out: dict[str, Any] = {
            k: v for k, v in asdict(self).items() if not k.endswith("_sum") and not k.endswith("_count")
        }
        out["mean_latency_ms"] = round(self.latency_ms_sum / done, 3) if done else None
        out["mean_ttft_ms"] = round(self.ttft_ms_sum / self.ttft_count, 3) if self.ttft_count else None
        out["mean_tpot_ms"] = round(self.tpot_ms_sum / self.tpot_count, 3) if self.tpot_count else None
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sample:
        sample = cls()
        for f in fields(cls):
            value = d.get(f.name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                setattr(sample, f.name, value)
        return sample


Key = tuple[str, str, str]  # (service, version, key id; "" when auth is off)


@dataclass
class Outcome:
    """What one call did, recorded when it ends."""

    status: str  # "succeeded" | "failed" | "throttled"
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0


class ServingMetrics:
    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.minutes: dict[int, dict[Key, Sample]] = defaultdict(lambda: defaultdict(Sample))
        self.totals: dict[Key, Sample] = defaultdict(Sample)
        self.in_flight: dict[tuple[str, str], int] = defaultdict(int)
        self.queued: dict[tuple[str, str], int] = defaultdict(int)

    def ended(self, key: Key, outcome: Outcome) -> None:
        m = int(time.time() // 60)
        for sample in (self.minutes[m][key], self.totals[key]):
            sample.received += 1
            if outcome.status == "succeeded":
                sample.succeeded += 1
            elif outcome.status == "throttled":
                sample.throttled += 1
            else:
                sample.failed += 1
            if outcome.status != "throttled":
                sample.latency_ms_sum += outcome.latency_ms
            if outcome.ttft_ms is not None:
                sample.ttft_ms_sum += outcome.ttft_ms
                sample.ttft_count += 1
            if outcome.tpot_ms is not None:
                sample.tpot_ms_sum += outcome.tpot_ms
                sample.tpot_count += 1
            sample.tokens_in += outcome.tokens_in
            sample.tokens_out += outcome.tokens_out

    def snapshot_entries(self) -> dict[str, bytes]:
        """KV entries for the current and previous minute: ``<ms-id>.<minute>.<gateway-id>`` -> JSON."""
        now = int(time.time() // 60)
        for m in [m for m in self.minutes if m < now - 1]:
            del self.minutes[m]
        out: dict[str, bytes] = {}
        for m in (now - 1, now):
            per_service: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for (svc, version, key), sample in self.minutes.get(m, {}).items():
                per_service[svc].append({"version": version, "key": key, **asdict(sample)})
            for svc, rows in per_service.items():
                out[f"{svc}.{m}.{self.gateway_id}"] = json.dumps({"minute": m, "rows": rows}).encode()
        return out


def time_series(entries: Iterable[bytes], start_minute: int, end_minute: int, by: str) -> list[dict[str, Any]]:
    """Sum every gateway's per-minute entries: one point per minute (and per version/key if ``by``)."""
    points: dict[tuple[int, str], Sample] = defaultdict(Sample)
    for raw in entries:
        try:
            doc = json.loads(raw)
            minute = int(doc["minute"])
            rows = doc["rows"]
        except (ValueError, KeyError, TypeError):
            continue
        if not start_minute <= minute <= end_minute:
            continue
        for row in rows:
            group = str(row.get(by, "")) if by else ""
            points[(minute, group)].merge(Sample.from_dict(row))
    out = []
    for (minute, group), sample in sorted(points.items()):
        point: dict[str, Any] = {"minute_start_ms": minute * 60_000, **sample.view()}
        if by:
            point[by] = group
        point["tokens_per_minute_in"] = sample.tokens_in
        point["tokens_per_minute_out"] = sample.tokens_out
        out.append(point)
    return out


def _labels(**kv: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in kv.items()) + "}"


def prometheus_text(metrics: ServingMetrics) -> str:
    """This process's totals in the Prometheus text format (0.0.4)."""
    counters = [
        ("capstan_serving_requests_received_total", "received", "Calls received"),
        ("capstan_serving_requests_succeeded_total", "succeeded", "Calls answered 2xx by the service"),
        ("capstan_serving_requests_failed_total", "failed", "Calls that failed (upstream or gateway error)"),
        ("capstan_serving_requests_throttled_total", "throttled", "Calls refused by a limit (429)"),
        ("capstan_serving_latency_ms_sum", "latency_ms_sum", "Sum of call latencies, ms"),
        ("capstan_serving_ttft_ms_sum", "ttft_ms_sum", "Sum of times to first token, ms"),
        ("capstan_serving_ttft_count", "ttft_count", "Streams with a first token"),
        ("capstan_serving_tpot_ms_sum", "tpot_ms_sum", "Sum of times per output token, ms"),
        ("capstan_serving_tpot_count", "tpot_count", "Calls with a time per output token"),
        ("capstan_serving_tokens_in_total", "tokens_in", "Prompt tokens"),
        ("capstan_serving_tokens_out_total", "tokens_out", "Completion tokens"),
    ]
    lines: list[str] = []
    for name, attr, help_text in counters:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} counter")
        for (svc, version, key), sample in sorted(metrics.totals.items()):
            lines.append(f"{name}{_labels(service=svc, version=version, key=key)} {getattr(sample, attr)}")
    for name, gauge, help_text in (
        ("capstan_serving_in_flight", metrics.in_flight, "Calls in flight through this gateway"),
        ("capstan_serving_queued", metrics.queued, "Calls waiting for a concurrency slot"),
    ):
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        for (svc, version), value in sorted(gauge.items()):
            lines.append(f"{name}{_labels(service=svc, version=version)} {value}")
    return "\n".join(lines) + "\n"
